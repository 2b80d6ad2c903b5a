//! Access control lists: who may do what to which topic, consumer group or the
//! cluster, as Kafka's ACLs.
//!
//! A binding names a principal (`User:alice`, or `User:*` for every logged-in
//! user), a resource (a topic, a group or the cluster; by literal name, `*`, or
//! name prefix), an operation and allow or deny. A request is allowed when some
//! binding allows it and none denies it: deny wins, and nothing is allowed by
//! default. Every operation implies `Describe` (who may produce to a topic may see
//! it). Superusers and other nodes skip the check. The table is replicated in the
//! metadata group and published to connections like the users (`users.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Buf, BufMut, BytesMut};
use raftmq_proto::pb::{self, ErrorCode};

/// A kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// The cluster (users, ACLs, members, leadership).
    Cluster,
}

/// What is done to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Every operation.
    All,
    /// Write to a topic.
    Produce,
    /// Read a topic; use a consumer group.
    Consume,
    /// See it.
    Describe,
    /// Create it.
    Create,
    /// Delete it.
    Delete,
    /// Change it.
    Alter,
}

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclBinding {
    /// `User:NAME` or `User:*`.
    pub principal: String,
    /// The kind of resource.
    pub resource: ResourceType,
    /// Its name or prefix (`*` with a literal pattern: all of them).
    pub name: String,
    /// Whether `name` is a prefix.
    pub prefixed: bool,
    /// The operation.
    pub operation: Operation,
    /// Deny instead of allow.
    pub deny: bool,
}

/// The name given to the cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// Why a binding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ACL: {0}")]
pub struct AclError(pub String);

impl AclBinding {
    /// Whether this binding is about `principal` doing `operation` to `name`.
    fn matches(&self, principal: &str, resource: ResourceType, name: &str, op: Operation) -> bool {
        let principal_matches = self.principal == principal || self.principal == "User:*";
        let name_matches = match (resource, self.prefixed) {
            (ResourceType::Cluster, _) => true,
            (_, true) => name.starts_with(&self.name),
            (_, false) => self.name == name || self.name == "*",
        };
        principal_matches
            && self.resource == resource
            && name_matches
            && (self.operation == op || self.operation == Operation::All)
    }

    /// From the wire, checked.
    pub fn from_pb(b: &pb::AclBinding) -> Result<AclBinding, AclError> {
        let bad = |why: &str| AclError(why.to_owned());
        let Some(user) = b.principal.strip_prefix("User:") else {
            return Err(bad("the principal must be User:NAME or User:*"));
        };
        super::users::validate_name(user).map_err(|e| AclError(e.to_string()))?;
        let resource = match pb::AclResourceType::try_from(b.resource_type) {
            Ok(pb::AclResourceType::Topic) => ResourceType::Topic,
            Ok(pb::AclResourceType::Group) => ResourceType::Group,
            Ok(pb::AclResourceType::Cluster) => ResourceType::Cluster,
            _ => return Err(bad("unknown resource type")),
        };
        let prefixed = match pb::AclPatternType::try_from(b.pattern_type) {
            Ok(pb::AclPatternType::Literal) => false,
            Ok(pb::AclPatternType::Prefixed) => true,
            Err(_) => return Err(bad("unknown pattern type")),
        };
        let operation = match pb::AclOperation::try_from(b.operation) {
            Ok(pb::AclOperation::All) => Operation::All,
            Ok(pb::AclOperation::Produce) => Operation::Produce,
            Ok(pb::AclOperation::Consume) => Operation::Consume,
            Ok(pb::AclOperation::Describe) => Operation::Describe,
            Ok(pb::AclOperation::Create) => Operation::Create,
            Ok(pb::AclOperation::Delete) => Operation::Delete,
            Ok(pb::AclOperation::Alter) => Operation::Alter,
            _ => return Err(bad("unknown operation")),
        };
        let name = if resource == ResourceType::Cluster {
            CLUSTER_NAME.to_owned()
        } else {
            if b.resource_name.is_empty() || b.resource_name.len() > 255 {
                return Err(bad("a resource name of 1 to 255 bytes"));
            }
            b.resource_name.clone()
        };
        Ok(AclBinding {
            principal: b.principal.clone(),
            resource,
            name,
            prefixed: prefixed && resource != ResourceType::Cluster,
            operation,
            deny: b.deny,
        })
    }

    /// To the wire.
    pub fn to_pb(&self) -> pb::AclBinding {
        pb::AclBinding {
            principal: self.principal.clone(),
            resource_type: match self.resource {
                ResourceType::Topic => pb::AclResourceType::Topic,
                ResourceType::Group => pb::AclResourceType::Group,
                ResourceType::Cluster => pb::AclResourceType::Cluster,
            } as i32,
            resource_name: self.name.clone(),
            pattern_type: if self.prefixed {
                pb::AclPatternType::Prefixed
            } else {
                pb::AclPatternType::Literal
            } as i32,
            operation: operation_pb(self.operation) as i32,
            deny: self.deny,
        }
    }
}

fn operation_pb(op: Operation) -> pb::AclOperation {
    match op {
        Operation::All => pb::AclOperation::All,
        Operation::Produce => pb::AclOperation::Produce,
        Operation::Consume => pb::AclOperation::Consume,
        Operation::Describe => pb::AclOperation::Describe,
        Operation::Create => pb::AclOperation::Create,
        Operation::Delete => pb::AclOperation::Delete,
        Operation::Alter => pb::AclOperation::Alter,
    }
}

/// Every ACL of the cluster.
pub type AclTable = BTreeSet<AclBinding>;

/// Whether `table` lets `principal` (`User:NAME`) do `op` to a resource.
pub fn allows(
    table: &AclTable,
    principal: &str,
    resource: ResourceType,
    name: &str,
    op: Operation,
) -> bool {
    let denied = table
        .iter()
        .any(|b| b.deny && b.matches(principal, resource, name, op));
    if denied {
        return false;
    }
    let implied: &[Operation] = if op == Operation::Describe {
        // Any operation on a resource implies seeing it.
        &[
            Operation::Describe,
            Operation::Produce,
            Operation::Consume,
            Operation::Create,
            Operation::Delete,
            Operation::Alter,
        ]
    } else {
        std::slice::from_ref(&op)
    };
    table.iter().any(|b| {
        !b.deny
            && implied
                .iter()
                .any(|&o| b.matches(principal, resource, name, o))
    })
}

/// The error a refusal is answered with.
pub fn refusal(principal: &str, resource: ResourceType, name: &str, op: Operation) -> pb::Error {
    let (code, what) = match resource {
        ResourceType::Topic => (
            ErrorCode::TopicAuthorizationFailed,
            format!("topic {name:?}"),
        ),
        ResourceType::Group => (
            ErrorCode::GroupAuthorizationFailed,
            format!("consumer group {name:?}"),
        ),
        ResourceType::Cluster => (ErrorCode::ClusterAuthorizationFailed, "the cluster".into()),
    };
    let op = format!("{:?}", op).to_ascii_lowercase();
    pb::Error::new(
        code,
        format!(
            "{principal} is not authorized to {op} {what} (no ACL allows it, or one denies it)"
        ),
    )
}

fn put_str(buf: &mut BytesMut, s: &str) {
    buf.put_u16_le(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

fn get_str(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 2 {
        return None;
    }
    let len = buf.get_u16_le() as usize;
    if buf.remaining() < len {
        return None;
    }
    let s = String::from_utf8(buf[..len].to_vec()).ok()?;
    buf.advance(len);
    Some(s)
}

/// Appends `bindings` in the command and snapshot encoding.
pub fn encode_bindings<'a>(
    buf: &mut BytesMut,
    bindings: impl ExactSizeIterator<Item = &'a AclBinding>,
) {
    buf.put_u32_le(bindings.len() as u32);
    for b in bindings {
        put_str(buf, &b.principal);
        buf.put_u8(b.resource as u8);
        put_str(buf, &b.name);
        buf.put_u8(u8::from(b.prefixed));
        buf.put_u8(b.operation as u8);
        buf.put_u8(u8::from(b.deny));
    }
}

/// Reads what [`encode_bindings`] wrote; `None` if it is damaged.
pub fn decode_bindings(buf: &mut &[u8]) -> Option<Vec<AclBinding>> {
    const RESOURCES: [ResourceType; 3] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
    ];
    const OPERATIONS: [Operation; 7] = [
        Operation::All,
        Operation::Produce,
        Operation::Consume,
        Operation::Describe,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
    ];
    if buf.remaining() < 4 {
        return None;
    }
    let count = buf.get_u32_le() as usize;
    // Each binding takes at least 8 bytes: never allocate beyond the input.
    if count > buf.remaining() / 8 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let principal = get_str(buf)?;
        if buf.remaining() < 1 {
            return None;
        }
        let resource = *RESOURCES.get(buf.get_u8() as usize)?;
        let name = get_str(buf)?;
        if buf.remaining() < 3 {
            return None;
        }
        let flag = |b: u8| match b {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        let prefixed = flag(buf.get_u8())?;
        let operation = *OPERATIONS.get(buf.get_u8() as usize)?;
        let deny = flag(buf.get_u8())?;
        out.push(AclBinding {
            principal,
            resource,
            name,
            prefixed,
            operation,
            deny,
        });
    }
    Some(out)
}

/// This node's copy of the ACL table, for authorization.
#[derive(Debug, Default)]
pub struct AclDirectory {
    table: RwLock<Arc<AclTable>>,
    version: AtomicU64,
}

impl AclDirectory {
    /// Publishes a new table.
    pub fn replace(&self, table: AclTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The current table.
    pub fn table(&self) -> Arc<AclTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(
        principal: &str,
        resource: ResourceType,
        name: &str,
        prefixed: bool,
        op: Operation,
        deny: bool,
    ) -> AclBinding {
        AclBinding {
            principal: principal.into(),
            resource,
            name: name.into(),
            prefixed,
            operation: op,
            deny,
        }
    }

    #[test]
    fn allow_deny_prefix_wildcards_and_implied_describe() {
        use Operation::*;
        use ResourceType::*;
        let table: AclTable = [
            binding("User:alice", Topic, "orders-", true, Produce, false),
            binding("User:alice", Topic, "orders-secret", false, All, true),
            binding("User:*", Topic, "public", false, Consume, false),
            binding("User:bob", Group, "*", false, Consume, false),
            binding("User:ops", Cluster, CLUSTER_NAME, false, Alter, false),
        ]
        .into_iter()
        .collect();
        assert!(allows(&table, "User:alice", Topic, "orders-eu", Produce));
        assert!(
            allows(&table, "User:alice", Topic, "orders-eu", Describe),
            "implied"
        );
        assert!(!allows(&table, "User:alice", Topic, "orders-eu", Consume));
        assert!(
            !allows(&table, "User:alice", Topic, "orders-secret", Produce),
            "deny wins"
        );
        assert!(!allows(
            &table,
            "User:alice",
            Topic,
            "orders-secret",
            Describe
        ));
        assert!(
            !allows(&table, "User:alice", Topic, "other", Produce),
            "nothing by default"
        );
        assert!(
            allows(&table, "User:carol", Topic, "public", Consume),
            "User:*"
        );
        assert!(
            !allows(&table, "User:carol", Topic, "public-2", Consume),
            "literal"
        );
        assert!(
            allows(&table, "User:bob", Group, "any-group", Consume),
            "literal *"
        );
        assert!(allows(&table, "User:ops", Cluster, CLUSTER_NAME, Alter));
        assert!(!allows(&table, "User:ops", Cluster, CLUSTER_NAME, Create));
        let e = refusal("User:alice", Topic, "x", Produce);
        assert_eq!(e.code, ErrorCode::TopicAuthorizationFailed as i32);
        assert!(
            e.message.contains("not authorized to produce topic \"x\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn bindings_round_trip_and_damage_is_refused() {
        let all: Vec<AclBinding> = vec![
            binding(
                "User:a",
                ResourceType::Topic,
                "t",
                true,
                Operation::Produce,
                false,
            ),
            binding(
                "User:*",
                ResourceType::Cluster,
                CLUSTER_NAME,
                false,
                Operation::Alter,
                true,
            ),
        ];
        let mut buf = BytesMut::new();
        encode_bindings(&mut buf, all.iter());
        let bytes = buf.freeze();
        assert_eq!(decode_bindings(&mut &bytes[..]), Some(all.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(decode_bindings(&mut &bytes[..cut]), None, "cut at {cut}");
        }
        for b in &all {
            assert_eq!(AclBinding::from_pb(&b.to_pb()).as_ref(), Ok(b));
        }
        let mut bad = all[0].to_pb();
        bad.principal = "alice".into();
        assert!(AclBinding::from_pb(&bad).is_err());
        bad.principal = "User:alice".into();
        bad.resource_type = 9;
        assert!(AclBinding::from_pb(&bad).is_err());
    }
}
