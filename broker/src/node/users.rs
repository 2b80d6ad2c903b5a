//! Users and ACLs in the metadata group: the requests that change them, the
//! bootstrap admin, and publishing both tables to the connections of this node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_proto::pb::{self, ErrorCode};
use raftmq_proto::scram::ScramCredential;

use super::{Node, PendingKind};
use crate::command::Command;
use crate::directory::METADATA_GROUP;
use crate::raft::Role;
use crate::response::Responder;
use crate::security::users::{self, UserDirectory};

/// How long before a bootstrap-user proposal that did not take is made again.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(5);

/// The node's part in user management (metadata group only).
#[derive(Default)]
pub(super) struct UserState {
    /// Where connections of this node look users up.
    directory: Option<Arc<UserDirectory>>,
    /// Where connections of this node look ACLs up.
    acls: Option<Arc<crate::security::acl::AclDirectory>>,
    /// The state machine's change count last published (`None`: publish).
    published: Option<u64>,
    /// The first admin, created by the leader while no user exists.
    bootstrap: Option<(String, Vec<ScramCredential>)>,
    bootstrap_proposed_at: Option<Instant>,
}

impl Node {
    /// Publishes this group's users to `directory` and creates `bootstrap` (name
    /// and credentials) once, when no user exists yet.
    pub fn with_users(
        mut self,
        directory: Arc<UserDirectory>,
        acls: Arc<crate::security::acl::AclDirectory>,
        bootstrap: Option<(String, Vec<ScramCredential>)>,
    ) -> Node {
        self.users = UserState {
            directory: Some(directory),
            acls: Some(acls),
            published: None,
            bootstrap,
            bootstrap_proposed_at: None,
        };
        self.publish_users();
        self
    }

    /// The state machine was replaced (a snapshot installed): publish it again.
    pub(super) fn users_replaced(&mut self) {
        self.users.published = None;
        self.publish_users();
    }

    /// Publishes the user table if it changed since the last time.
    pub(super) fn publish_users(&mut self) {
        let Some(directory) = &self.users.directory else {
            return;
        };
        // Current once a leader is known and everything it committed is applied,
        // and from then on (a change applied a moment later than elsewhere is
        // ordinary propagation, not a node that has just started).
        let caught_up =
            self.raft.leader().is_some() && self.state.applied() >= self.raft.commit_index();
        if caught_up && !directory.is_current() {
            directory.set_current(true);
        }
        let changes = self.state.users_changes();
        if self.users.published == Some(changes) {
            return;
        }
        directory.replace(self.state.users().clone());
        if let Some(acls) = &self.users.acls {
            acls.replace(self.state.acls().clone());
        }
        self.users.published = Some(changes);
    }

    /// On the metadata leader, while no user exists: proposes the bootstrap user.
    pub(super) fn create_bootstrap_user(&mut self, now: Instant) {
        if self.group_id() != METADATA_GROUP
            || self.raft.role() != Role::Leader
            || !self.state.users().is_empty()
        {
            return;
        }
        let Some((name, credentials)) = self.users.bootstrap.clone() else {
            return;
        };
        if self
            .users
            .bootstrap_proposed_at
            .is_some_and(|at| now.duration_since(at) < BOOTSTRAP_RETRY)
        {
            return;
        }
        self.users.bootstrap_proposed_at = Some(now);
        tracing::info!(user = %name, "creating the bootstrap user");
        let command = Command::UpsertUser { name, credentials };
        // Nobody waits for the answer: the next upkeep looks at the table again.
        let (tx, _unheard) = tokio::sync::oneshot::channel();
        self.propose_command(command, PendingKind::User, Responder::to_caller(tx));
    }

    /// `UpsertUser`: the connection has already turned any password into
    /// credentials; one that still carries a password is refused, so no password
    /// can reach the log.
    pub(super) fn upsert_user(&mut self, req: pb::UpsertUserRequest, reply: Responder) {
        if let Err(e) = users::validate_name(&req.name) {
            return reply.error(pb::Error::new(ErrorCode::InvalidRequest, e.to_string()));
        }
        if !req.password.is_empty() {
            return reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                "a password must be turned into credentials before it reaches a Raft group",
            ));
        }
        let credentials = match users::credentials_from_pb(&req.credentials) {
            Ok(c) => c,
            Err(e) => return reply.error(pb::Error::new(ErrorCode::InvalidRequest, e.to_string())),
        };
        let command = Command::UpsertUser {
            name: req.name,
            credentials,
        };
        self.propose_command(command, PendingKind::User, reply);
    }

    /// `DeleteUser`.
    pub(super) fn delete_user(&mut self, req: pb::DeleteUserRequest, reply: Responder) {
        if !self.state.users().contains_key(&req.name) {
            return reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                format!("there is no user {:?}", req.name),
            ));
        }
        let command = Command::DeleteUser { name: req.name };
        self.propose_command(command, PendingKind::User, reply);
    }

    /// `CreateAcls`: checked, then replicated.
    pub(super) fn create_acls(&mut self, req: pb::CreateAclsRequest, reply: Responder) {
        let bindings = match acl_bindings(&req.bindings) {
            Ok(b) => b,
            Err(e) => return reply.error(e),
        };
        self.propose_command(Command::CreateAcls { bindings }, PendingKind::Acls, reply);
    }

    /// `DeleteAcls`: removes the exact bindings given.
    pub(super) fn delete_acls(&mut self, req: pb::DeleteAclsRequest, reply: Responder) {
        let bindings = match acl_bindings(&req.bindings) {
            Ok(b) => b,
            Err(e) => return reply.error(e),
        };
        self.propose_command(Command::DeleteAcls { bindings }, PendingKind::Acls, reply);
    }

    /// `ListAcls`.
    pub(super) fn list_acls(&self) -> pb::ListAclsResponse {
        pb::ListAclsResponse {
            bindings: self.state.acls().iter().map(|b| b.to_pb()).collect(),
        }
    }

    /// `ListUsers`: names and mechanisms, never credentials.
    pub(super) fn list_users(&self) -> pb::ListUsersResponse {
        pb::ListUsersResponse {
            users: self
                .state
                .users()
                .iter()
                .map(|(name, credentials)| pb::UserDescription {
                    name: name.clone(),
                    mechanisms: credentials
                        .iter()
                        .map(|c| c.mechanism.name().to_owned())
                        .collect(),
                })
                .collect(),
        }
    }
}

fn acl_bindings(
    bindings: &[pb::AclBinding],
) -> Result<Vec<crate::security::acl::AclBinding>, pb::Error> {
    if bindings.is_empty() || bindings.len() > 1000 {
        return Err(pb::Error::new(
            ErrorCode::InvalidRequest,
            "1 to 1000 ACLs per request",
        ));
    }
    bindings
        .iter()
        .map(crate::security::acl::AclBinding::from_pb)
        .collect::<Result<_, _>>()
        .map_err(|e| pb::Error::new(ErrorCode::InvalidRequest, e.to_string()))
}
