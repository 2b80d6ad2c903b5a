//! The protocol-neutral front of the broker: every client request, whichever port
//! and protocol it came in on, becomes one broker operation (a
//! [`pb::request::Body`]) handed to the Raft group that owns it, and its answer is
//! one [`pb::Response`] whose errors are the broker's one error type
//! ([`pb::Error`] with its [`ErrorCode`]). Protocol adapters (the native frame
//! server in [`crate::server`], the Kafka listener in [`crate::kafka`]) only
//! translate wire types and error codes around these calls.

use std::sync::Arc;

use raftmq_proto::pb;
use raftmq_proto::pb::ErrorCode;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::directory::GroupDirectory;
use crate::node::NodeInput;
use crate::response::Responder;

/// Hands operations to the node tasks of the groups that own them.
#[derive(Debug, Clone)]
pub struct Service {
    directory: Arc<GroupDirectory>,
    config: Arc<BrokerConfig>,
    security: Arc<crate::security::Security>,
    /// Who the operations are for: this node itself unless bound to a
    /// connection's principal ([`Service::for_principal`]).
    principal: Arc<crate::security::Principal>,
    shutdown: CancellationToken,
}

impl Service {
    /// A service over the groups of `directory`.
    pub fn new(
        directory: Arc<GroupDirectory>,
        config: Arc<BrokerConfig>,
        security: Arc<crate::security::Security>,
        shutdown: CancellationToken,
    ) -> Service {
        let principal = Arc::new(crate::security::Principal::Node(format!(
            "node {}",
            config.node_id.0
        )));
        Service {
            directory,
            config,
            security,
            principal,
            shutdown,
        }
    }

    /// The same service, acting for `principal`: every operation is checked against
    /// what it may do, and listings show only what it may see.
    pub fn for_principal(&self, principal: crate::security::Principal) -> Service {
        Service {
            principal: Arc::new(principal),
            ..self.clone()
        }
    }

    /// Who the operations are for.
    pub fn principal(&self) -> &crate::security::Principal {
        &self.principal
    }

    /// The broker's transport security.
    pub fn security(&self) -> &crate::security::Security {
        &self.security
    }

    /// The same, shared.
    pub fn security_arc(&self) -> Arc<crate::security::Security> {
        self.security.clone()
    }

    /// The broker's settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The directory of groups (placement, statuses) this service routes with.
    pub fn directory(&self) -> &GroupDirectory {
        &self.directory
    }

    /// Routes `body` to the group that owns it (the metadata group, or a queue's
    /// data group) and hands it over; `reply` is always answered. A group that does
    /// not run here is answered with a redirect (`NOT_LEADER` naming a replica) or,
    /// while it starts, `NOT_READY`. Returns false once the broker is shutting down
    /// (the caller should stop reading requests).
    pub async fn submit(&self, body: pb::request::Body, reply: Responder) -> bool {
        if let Err(e) = self.security.authorize(&self.principal, &body) {
            reply.error(e);
            return true;
        }
        if self.security.checks_acls(&self.principal)
            && matches!(
                body,
                pb::request::Body::Metadata(_) | pb::request::Body::ListGroups(_)
            )
        {
            if !self.security.acls_current() {
                // What the principal may see is not known yet here.
                reply.error(crate::security::catching_up());
                return true;
            }
            // Answered once filtered to what the principal may see.
            let (tx, rx) = oneshot::channel();
            let accepted = self.route(body, Responder::to_caller(tx)).await;
            let service = self.clone();
            tokio::spawn(async move {
                match rx.await {
                    Ok(mut response) => match (&mut response.body, response.error) {
                        (_, Some(error)) => reply.error(error),
                        (Some(body), None) => {
                            service.filter_listing(body);
                            reply.ok(response.body.take().expect("a body"));
                        }
                        (None, None) => reply.error(pb::Error::shutting_down()),
                    },
                    Err(_) => reply.error(pb::Error::shutting_down()),
                }
            });
            return accepted;
        }
        self.route(body, reply).await
    }

    /// Removes from a metadata answer the topics, and from a group listing the
    /// groups, the principal may not describe.
    fn filter_listing(&self, body: &mut pb::response::Body) {
        use crate::security::acl::{Operation, ResourceType};
        let may = |resource, name: &str| {
            self.security
                .may(&self.principal, resource, name, Operation::Describe)
        };
        match body {
            pb::response::Body::Metadata(m) => {
                m.topics.retain(|t| may(ResourceType::Topic, &t.name));
            }
            pb::response::Body::ListGroups(g) => {
                g.groups.retain(|name| may(ResourceType::Group, name));
            }
            _ => {}
        }
    }

    /// Hands several requests over at once (the parts of a multi-queue produce):
    /// each is authorized and routed as by [`submit`](Self::submit), and the
    /// requests of one group reach it as one input, in their order (one wake-up of
    /// its task, not one per request). Every reply is answered. False once the
    /// broker is shutting down.
    pub async fn submit_all(&self, requests: Vec<(pb::request::Body, Responder)>) -> bool {
        let mut by_group: std::collections::BTreeMap<crate::directory::GroupId, Vec<_>> =
            std::collections::BTreeMap::new();
        for (body, reply) in requests {
            if let Err(e) = self.security.authorize(&self.principal, &body) {
                reply.error(e);
                continue;
            }
            let group = self.directory.route(&body);
            by_group.entry(group).or_default().push((body, reply));
        }
        let mut accepted = true;
        for (group, requests) in by_group {
            let Some(inbox) = self.directory.inbox(group).filter(|_| accepted) else {
                let error = self.not_running_here(group);
                for (_, reply) in requests {
                    reply.error(error.clone());
                }
                continue;
            };
            if let Err(e) = inbox.send(NodeInput::Clients(requests)).await {
                if let NodeInput::Clients(requests) = e.0 {
                    for (_, reply) in requests {
                        reply.error(pb::Error::shutting_down());
                    }
                }
                accepted = false;
            }
        }
        accepted
    }

    /// The answer for a request of `group` when the group does not run here.
    fn not_running_here(&self, group: crate::directory::GroupId) -> pb::Error {
        if self.shutdown.is_cancelled() {
            pb::Error::shutting_down()
        } else if let Some(replica) = self
            .directory
            .replica_elsewhere(group, self.config.node_id.0)
        {
            // Not placed here: a replica of the group names its leader.
            let mut error = pb::Error::not_leader(Some(&replica.to_string()));
            error.message = format!("group {group} does not run on this node; ask {replica}");
            error
        } else {
            // Placed here and starting (after a restart, once the metadata group has
            // applied its placement), or the placement is not known yet: retriable.
            pb::Error::not_ready(
                format!("group {group} is not running on this node yet (starting); retry"),
                None,
            )
        }
    }

    async fn route(&self, body: pb::request::Body, reply: Responder) -> bool {
        let group = self.directory.route(&body);
        let Some(inbox) = self.directory.inbox(group) else {
            reply.error(self.not_running_here(group));
            return true;
        };
        if let Err(e) = inbox.send(NodeInput::Client { body, reply }).await {
            if let NodeInput::Client { reply, .. } = e.0 {
                reply.error(pb::Error::shutting_down());
            }
            return false;
        }
        true
    }

    /// Runs one operation and waits for its answer: `Ok` with the success body, or
    /// the broker's error (with the body some errors carry, e.g. a duplicate
    /// produce's offset).
    pub async fn call(&self, body: pb::request::Body) -> Result<pb::response::Body, Failure> {
        self.begin(body).await.answer().await
    }

    /// Hands one operation to its group and returns at once with the answer to
    /// come: operations begun one after another reach their group in that order
    /// (the produce order a connection must keep).
    pub async fn begin(&self, body: pb::request::Body) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.submit(body, Responder::to_caller(tx)).await;
        Answer(rx)
    }
}

/// The answer of an operation handed over by [`Service::begin`].
#[derive(Debug)]
pub struct Answer(oneshot::Receiver<pb::Response>);

impl Answer {
    /// Waits for it.
    pub async fn answer(self) -> Result<pb::response::Body, Failure> {
        let response = self.0.await.unwrap_or_else(|_| pb::Response {
            correlation_id: 0,
            error: Some(pb::Error::shutting_down()),
            body: None,
        });
        match (response.error, response.body) {
            (None, Some(body)) => Ok(body),
            (Some(error), body) => Err(Failure { error, body }),
            (None, None) => Err(Failure {
                error: pb::Error::new(ErrorCode::InvalidRequest, "empty answer"),
                body: None,
            }),
        }
    }
}

impl Service {
    /// Like [`Service::call`], for operations of the metadata group that a protocol
    /// without redirects cannot send to the leader itself (a Kafka client asking
    /// any broker for a producer id or a new topic): a follower's `NOT_LEADER`
    /// naming the leader is forwarded once to the leader's client port.
    pub async fn call_at_leader(
        &self,
        body: pb::request::Body,
    ) -> Result<pb::response::Body, Failure> {
        let first = self.call(body.clone()).await;
        let leader = match &first {
            Err(f)
                if matches!(f.code(), ErrorCode::NotLeader | ErrorCode::NotReady)
                    && !f.error.leader_address.is_empty() =>
            {
                f.error.leader_address.clone()
            }
            _ => return first,
        };
        if leader == self.config.listen.to_string() {
            return first;
        }
        let on_behalf_of = match self.principal.as_ref() {
            crate::security::Principal::User(name) => name.as_str(),
            _ => "",
        };
        let forwarded = forward(
            &self.security,
            &leader,
            body,
            on_behalf_of,
            self.config.max_frame_bytes,
        );
        match forwarded.await {
            Ok(response) => match (response.error, response.body) {
                (None, Some(body)) => Ok(body),
                (Some(error), body) => Err(Failure { error, body }),
                (None, None) => first,
            },
            Err(e) => {
                tracing::debug!(%leader, error = %e, "forwarding to the leader failed");
                first
            }
        }
    }
}

/// How long a forwarded request may take, connection included.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one request to another broker's client port and waits for its answer.
async fn forward(
    security: &crate::security::Security,
    address: &str,
    body: pb::request::Body,
    on_behalf_of: &str,
    max_frame_bytes: usize,
) -> std::io::Result<pb::Response> {
    use futures::{SinkExt, StreamExt};
    use prost::Message;
    let exchange = async {
        let stream = security.connect(address).await?;
        let mut framed =
            tokio_util::codec::Framed::new(stream, raftmq_proto::frame::codec(max_frame_bytes));
        let mut request = pb::Request::new(1, body);
        request.on_behalf_of = on_behalf_of.to_owned();
        framed
            .send(raftmq_proto::frame::encode_request(&request))
            .await?;
        let frame = framed
            .next()
            .await
            .ok_or_else(|| std::io::Error::other("connection closed before the answer"))??;
        // Closed properly (TLS close_notify), not dropped mid-stream.
        let _ = tokio::io::AsyncWriteExt::shutdown(framed.get_mut()).await;
        pb::Response::decode(frame.freeze()).map_err(std::io::Error::other)
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

/// A refused operation: the broker's error and, for some codes, a body.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong.
    pub error: pb::Error,
    /// Present with some errors (a duplicate produce says where the batch is).
    pub body: Option<pb::response::Body>,
}

impl Failure {
    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::try_from(self.error.code).unwrap_or(ErrorCode::InvalidRequest)
    }
}
