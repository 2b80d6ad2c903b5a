//! The cluster around the Raft group: who the members are and where they listen.
//!
//! The Raft core knows members only as node ids (voters and learners). Each
//! membership entry also carries, after the core's lists, a
//! [`pb::MembershipContext`]: the cluster id, and each member's address and
//! data-directory incarnation. Every node thus learns addresses from the log itself:
//! a node added later is found by every member without editing their `--peers`.
//!
//! - A new cluster starts from its bootstrap configuration (`--peers`, or this node
//!   alone). It has no membership entry yet; its first leader writes one with the
//!   same members, a new random cluster id and the incarnations it knows. From then
//!   on the log says who belongs.
//! - A node refuses peer messages from another cluster, and messages from a member
//!   whose incarnation differs from the recorded one (a wiped or replaced data
//!   directory must join again as a new member).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use raftmq_proto::pb;

use crate::raft::{Membership, MembershipEntry, NodeId};
use crate::state_machine::StateMachine;

/// A member's address and identity as the membership in effect records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Where it listens (clients and peers).
    pub address: SocketAddr,
    /// Its data directory's incarnation; 0 while not recorded.
    pub incarnation: u64,
}

/// The membership in effect, decoded: members with addresses, and the cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// 0 until the first leader wrote the first membership entry.
    pub cluster_id: u64,
    /// Voters and learners.
    pub membership: Membership,
    /// Index of the membership entry (0: the bootstrap configuration).
    pub index: u64,
    /// Address and incarnation of each member (every voter and learner), as this
    /// node reaches it (its own `--peers` override the log's addresses).
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// The same as the log records them (what a new membership entry carries on).
    pub recorded: BTreeMap<NodeId, MemberInfo>,
}

impl ClusterView {
    /// Decodes a membership entry's context. A member this node's own `--peers`
    /// names (`local`) is reached at that address (an operator's choice wins: a
    /// proxy, another interface); the others at the address the log records.
    pub fn from_entry(entry: &MembershipEntry, local: &BTreeMap<NodeId, SocketAddr>) -> Self {
        let context = pb::MembershipContext::decode(entry.context.as_ref()).unwrap_or_default();
        let mut members = BTreeMap::new();
        for m in &context.members {
            if let Ok(address) = m.address.parse() {
                members.insert(
                    NodeId(m.node_id),
                    MemberInfo {
                        address,
                        incarnation: m.incarnation,
                    },
                );
            }
        }
        members.retain(|id, _| entry.membership.contains(*id));
        let mut recorded = members.clone();
        for id in entry.membership.members() {
            if let Some(&address) = local.get(&id) {
                recorded.entry(id).or_insert(MemberInfo {
                    address,
                    incarnation: 0,
                });
                members
                    .entry(id)
                    .and_modify(|m| m.address = address)
                    .or_insert(MemberInfo {
                        address,
                        incarnation: 0,
                    });
            }
        }
        ClusterView {
            cluster_id: context.cluster_id,
            membership: entry.membership.clone(),
            index: entry.index.0,
            members,
            recorded,
        }
    }

    /// The context bytes for a membership entry of `membership` with these members'
    /// details (members without details are left out).
    pub fn encode_context(
        cluster_id: u64,
        membership: &Membership,
        members: &BTreeMap<NodeId, MemberInfo>,
    ) -> Bytes {
        let context = pb::MembershipContext {
            cluster_id,
            members: membership
                .members()
                .filter_map(|id| {
                    members.get(&id).map(|m| pb::MemberInfo {
                        node_id: id.0,
                        address: m.address.to_string(),
                        incarnation: m.incarnation,
                        voter: membership.is_voter(id),
                    })
                })
                .collect(),
        };
        Bytes::from(context.encode_to_vec())
    }

    /// The members for a status answer.
    pub fn to_pb(&self) -> Vec<pb::MemberInfo> {
        self.membership
            .members()
            .map(|id| {
                let info = self.members.get(&id);
                pb::MemberInfo {
                    node_id: id.0,
                    address: info.map(|m| m.address.to_string()).unwrap_or_default(),
                    incarnation: info.map_or(0, |m| m.incarnation),
                    voter: self.membership.is_voter(id),
                }
            })
            .collect()
    }
}

/// The bootstrap configuration as a membership entry at index 0: `peers` are the
/// voters (none for a node that joins an existing cluster).
pub fn bootstrap_entry(peers: &BTreeMap<NodeId, SocketAddr>) -> MembershipEntry {
    let membership = Membership::new(peers.keys().copied().collect(), Vec::new());
    let members = peers
        .iter()
        .map(|(&id, &address)| {
            (
                id,
                MemberInfo {
                    address,
                    incarnation: 0,
                },
            )
        })
        .collect();
    MembershipEntry {
        index: crate::raft::LogIndex::ZERO,
        context: ClusterView::encode_context(0, &membership, &members),
        membership,
    }
}

/// The membership in effect at a restored state machine's applied index: the last
/// membership entry it applied, or the bootstrap configuration.
pub fn entry_from_state(state: &StateMachine, bootstrap: &MembershipEntry) -> MembershipEntry {
    let decoded = state
        .membership()
        .and_then(|(_, body)| Membership::decode(body).ok());
    match decoded {
        Some((membership, context)) => MembershipEntry {
            index: state.applied(),
            membership,
            context,
        },
        None => MembershipEntry {
            index: state.applied(),
            ..bootstrap.clone()
        },
    }
}

/// A random, non-zero 64-bit id (cluster ids, incarnations): the standard
/// library's randomly keyed hasher mixed with the time and the process id.
pub fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Why the data directory's identity file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing failed.
    #[error("{op} {path}: {error}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file does not parse.
    #[error("{path} is damaged ({reason}); restore it or remove the data directory to join as a new member")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory belongs to another node id.
    #[error("the data directory belongs to node {found}, not node {expected}; use --node-id {found} or another directory")]
    WrongNode {
        /// `--node-id`.
        expected: u64,
        /// The directory's.
        found: u64,
    },
    /// Syncing failed.
    #[error(transparent)]
    Store(#[from] raftmq_store::StoreError),
}

/// Who this data directory is: the node id, a random incarnation created with the
/// directory (a wiped directory gets a new one, so the cluster can tell it is not
/// the member it knew), and the cluster id once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node id the directory was created for.
    pub node_id: NodeId,
    /// This directory's incarnation (never 0).
    pub incarnation: u64,
    /// The cluster this node belongs to (0 until learned).
    pub cluster_id: u64,
}

const IDENTITY_FILE: &str = "identity";

impl NodeIdentity {
    /// Reads `<dir>/identity`, or creates it with a new incarnation. `fresh` is
    /// whether the directory holds no Raft state yet (checked by the caller).
    pub fn load_or_create(dir: &Path, node_id: NodeId) -> Result<NodeIdentity, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let identity = Self::parse(&text).map_err(|reason| IdentityError::Corrupt {
                    path: path.clone(),
                    reason,
                })?;
                if identity.node_id != node_id {
                    return Err(IdentityError::WrongNode {
                        expected: node_id.0,
                        found: identity.node_id.0,
                    });
                }
                Ok(identity)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = NodeIdentity {
                    node_id,
                    incarnation: random_id(),
                    cluster_id: 0,
                };
                identity.save(dir)?;
                Ok(identity)
            }
            Err(error) => Err(IdentityError::Io {
                op: "read",
                path,
                error,
            }),
        }
    }

    fn parse(text: &str) -> Result<NodeIdentity, String> {
        let mut fields = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            // The ids in hex (as logs and `cluster status` show them), the node id
            // in decimal.
            let k = k.trim();
            let v = v.trim();
            let v = if k == "node_id" {
                v.parse()
            } else {
                u64::from_str_radix(v, 16)
            }
            .map_err(|_| format!("{k} is not a number"))?;
            fields.insert(k.to_string(), v);
        }
        let get = |k: &str| fields.get(k).copied().ok_or_else(|| format!("{k} missing"));
        let identity = NodeIdentity {
            node_id: NodeId(get("node_id")?),
            incarnation: get("incarnation")?,
            cluster_id: get("cluster_id")?,
        };
        if identity.incarnation == 0 {
            return Err("incarnation 0".into());
        }
        Ok(identity)
    }

    /// Writes the file atomically and durably (temp file, fsync, rename, fsync dir).
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let text = format!(
            "node_id={}\nincarnation={:016x}\ncluster_id={:016x}\n",
            self.node_id.0, self.incarnation, self.cluster_id
        );
        let io = |op, path: &Path, error| IdentityError::Io {
            op,
            path: path.to_path_buf(),
            error,
        };
        let file = std::fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
        std::io::Write::write_all(&mut &file, text.as_bytes()).map_err(|e| io("write", &tmp, e))?;
        raftmq_store::durability::sync_data(&file, &tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
        raftmq_store::durability::sync_dir(dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_round_trips_and_falls_back_to_peers() {
        let peers: BTreeMap<NodeId, SocketAddr> = [
            (NodeId(1), "127.0.0.1:1".parse().unwrap()),
            (NodeId(2), "127.0.0.1:2".parse().unwrap()),
        ]
        .into();
        let boot = bootstrap_entry(&peers);
        let view = ClusterView::from_entry(&boot, &BTreeMap::new());
        assert_eq!(view.cluster_id, 0);
        assert_eq!(view.members.len(), 2);
        assert_eq!(view.members[&NodeId(2)].address, peers[&NodeId(2)]);

        let membership = Membership::new(vec![NodeId(1), NodeId(2)], vec![NodeId(3)]);
        let entry = MembershipEntry {
            index: crate::raft::LogIndex(7),
            context: ClusterView::encode_context(42, &membership, &view.members),
            membership,
        };
        let three: BTreeMap<NodeId, SocketAddr> =
            [(NodeId(3), "127.0.0.1:3".parse().unwrap())].into();
        let view = ClusterView::from_entry(&entry, &three);
        assert_eq!(view.cluster_id, 42);
        assert_eq!(view.members.len(), 3, "learner 3 found through local peers");
        assert_eq!(view.to_pb().len(), 3);
        assert!(!view.to_pb()[2].voter);
    }

    #[test]
    fn identity_is_created_once_and_checked() {
        let dir = std::env::temp_dir().join(format!("raftmq-identity-{}", random_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = NodeIdentity::load_or_create(&dir, NodeId(3)).unwrap();
        let mut b = NodeIdentity::load_or_create(&dir, NodeId(3)).unwrap();
        assert_eq!(a, b);
        b.cluster_id = 77;
        b.save(&dir).unwrap();
        assert_eq!(
            NodeIdentity::load_or_create(&dir, NodeId(3))
                .unwrap()
                .cluster_id,
            77
        );
        assert!(matches!(
            NodeIdentity::load_or_create(&dir, NodeId(4)),
            Err(IdentityError::WrongNode {
                expected: 4,
                found: 3
            })
        ));
        std::fs::write(dir.join(IDENTITY_FILE), "node_id=3\n").unwrap();
        assert!(matches!(
            NodeIdentity::load_or_create(&dir, NodeId(3)),
            Err(IdentityError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
