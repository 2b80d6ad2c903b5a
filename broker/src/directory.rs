//! The Raft groups one broker process hosts, and what its connections need to send
//! each request to the right one.
//!
//! Group 0 is the **metadata group**: members, topics, consumer groups and their
//! offsets, producer ids, and which data group holds each queue. Groups 1..=N are
//! **data groups**: each a Raft group with its own commit log holding the batches of
//! the queues placed on it (a log shared by several queues, not one per queue, so
//! fsyncs stay few and batches large). A cluster without data groups (the default,
//! and every data directory of earlier versions) keeps every queue in group 0.
//!
//! Each group is driven by its own node task ([`crate::node::Node`]). The directory is
//! the only state they share: the inboxes, what the metadata group last applied about
//! placement, and each group's status (leader, indexes) for metadata answers. Reads
//! take a lock for a few map lookups; nothing is held across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use raftmq_proto::pb;
use tokio::sync::mpsc;

use crate::cluster::NodeIdentity;
use crate::command::TopicRetention;
use crate::node::NodeInput;
pub use crate::state_machine::DataGroup;

/// A Raft group's number within the cluster.
pub type GroupId = u32;

/// The metadata group.
pub const METADATA_GROUP: GroupId = 0;

/// A topic as the metadata group placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlacement {
    /// The topic's id (the same in every group that holds its queues).
    pub id: u32,
    /// Number of queues.
    pub queues: u32,
    /// Its own retention.
    pub retention: TopicRetention,
    /// The group of each queue (empty: all in group 0).
    pub groups: Vec<GroupId>,
}

impl TopicPlacement {
    /// The group holding `queue`.
    pub fn group_of(&self, queue: u32) -> GroupId {
        self.groups
            .get(queue as usize)
            .copied()
            .unwrap_or(METADATA_GROUP)
    }
}

/// What the metadata group last applied about topics and data groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicPlacement>,
    /// Every topic id below this was assigned once (a data group holding a topic of
    /// a lower id that is not in `topics` holds a deleted topic).
    pub next_topic_id: u32,
    /// The data groups and where each is to live.
    pub groups: BTreeMap<GroupId, DataGroup>,
    /// The members' client addresses (where a data group's leader reaches a new
    /// replica).
    pub addresses: BTreeMap<crate::raft::NodeId, std::net::SocketAddr>,
    /// Each member's data-directory incarnation as the metadata group records it
    /// (0 while not heard from): a data group drops a member recorded with
    /// another one (a node wiped and joined again under its id).
    pub incarnations: BTreeMap<crate::raft::NodeId, u64>,
}

/// A request from the metadata group's node to start the data groups placed on
/// this node (those already running are kept).
#[derive(Debug, Clone)]
pub struct StartGroups {
    /// The groups, with their replicas.
    pub groups: Vec<(GroupId, DataGroup)>,
    /// This data directory's identity as the metadata group knows it (the cluster
    /// id is set by then).
    pub identity: NodeIdentity,
    /// The members' addresses as the metadata group knows them.
    pub addresses: BTreeMap<crate::raft::NodeId, std::net::SocketAddr>,
}

/// The groups of this process.
#[derive(Debug)]
pub struct GroupDirectory {
    inboxes: RwLock<BTreeMap<GroupId, mpsc::Sender<NodeInput>>>,
    status: RwLock<BTreeMap<GroupId, pb::GroupInfo>>,
    /// Replicas forgotten whose files are still being deleted.
    retiring: RwLock<std::collections::BTreeSet<GroupId>>,
    placement: RwLock<Arc<Placement>>,
    /// (topic id, queue) → (first offset stored, next offset) of the queues of the
    /// data groups running here, for consumer-group lag on the metadata group.
    queue_bounds: RwLock<BTreeMap<(u32, u32), (u64, u64)>>,
    start: mpsc::UnboundedSender<StartGroups>,
    /// Turns over the replicas a request for a group not running here is sent to.
    redirects: std::sync::atomic::AtomicUsize,
    /// Set by [`GroupDirectory::close`]: no inbox is registered after it.
    closed: std::sync::atomic::AtomicBool,
    /// When each peer node was last heard from (see `crate::liveness`).
    liveness: crate::liveness::Liveness,
    /// The process is stopping: every group hands its leadership to another
    /// replica first (see [`GroupDirectory::hand_over`]).
    handing_over: std::sync::atomic::AtomicBool,
}

impl GroupDirectory {
    /// An empty directory and the receiving end of its start requests.
    pub fn new() -> (Arc<GroupDirectory>, mpsc::UnboundedReceiver<StartGroups>) {
        let (start, rx) = mpsc::unbounded_channel();
        let directory = GroupDirectory {
            inboxes: RwLock::default(),
            status: RwLock::default(),
            retiring: RwLock::default(),
            placement: RwLock::default(),
            queue_bounds: RwLock::default(),
            redirects: std::sync::atomic::AtomicUsize::new(0),
            start,
            closed: std::sync::atomic::AtomicBool::new(false),
            liveness: crate::liveness::Liveness::default(),
            handing_over: std::sync::atomic::AtomicBool::new(false),
        };
        (Arc::new(directory), rx)
    }

    /// Makes `group` reachable through `inbox`; after [`close`](Self::close) the
    /// inbox is dropped instead (its node task stops at once).
    pub fn register(&self, group: GroupId, inbox: mpsc::Sender<NodeInput>) {
        let mut inboxes = write(&self.inboxes);
        if !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            inboxes.insert(group, inbox);
        }
    }

    /// Whether `group` runs here.
    pub fn hosts(&self, group: GroupId) -> bool {
        read(&self.inboxes).contains_key(&group)
    }

    /// A replica that ran here retired (moved to other nodes): requests for its
    /// group are redirected from now on, and neither its status nor its queues'
    /// offset ranges are reported any more.
    pub fn forget(&self, group: GroupId) {
        write(&self.retiring).insert(group);
        write(&self.inboxes).remove(&group);
        write(&self.status).remove(&group);
        let placement = self.placement();
        let held: Vec<(u32, u32)> = placement
            .topics
            .values()
            .flat_map(|t| {
                (0..t.queues)
                    .filter(move |&q| t.group_of(q) == group)
                    .map(move |q| (t.id, q))
            })
            .collect();
        let mut bounds = write(&self.queue_bounds);
        for key in held {
            bounds.remove(&key);
        }
    }

    /// A forgotten replica's files are gone (or stay for good): the group may be
    /// started here again.
    pub fn retired(&self, group: GroupId) {
        write(&self.retiring).remove(&group);
    }

    /// Whether a replica of `group` is being retired here (its files deleted).
    pub fn is_retiring(&self, group: GroupId) -> bool {
        read(&self.retiring).contains(&group)
    }

    /// Drops every inbox: each node task stops once the requests already queued
    /// are handled (shutdown, after the connections are gone).
    pub fn close(&self) {
        let mut inboxes = write(&self.inboxes);
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        inboxes.clear();
    }

    /// The inbox of `group`, if it runs here.
    pub fn inbox(&self, group: GroupId) -> Option<mpsc::Sender<NodeInput>> {
        read(&self.inboxes).get(&group).cloned()
    }

    /// The group a client request belongs to: a queue's group for produce, fetch
    /// and offset lookups, the metadata group for everything else (and for a topic
    /// it has not published yet, which that group then answers).
    pub fn route(&self, body: &pb::request::Body) -> GroupId {
        let (topic, queue) = match body {
            pb::request::Body::Produce(r) => (&r.topic, r.queue),
            pb::request::Body::Fetch(r) => (&r.topic, r.queue),
            pb::request::Body::ListOffsets(r) => (&r.topic, r.queue),
            _ => return METADATA_GROUP,
        };
        read(&self.placement)
            .topics
            .get(topic)
            .map_or(METADATA_GROUP, |t| t.group_of(queue))
    }

    /// For a request of a group not running here: the client address of one of
    /// its placed replicas other than `me` (a different one each time, so that a
    /// dead replica does not hold a client forever), which runs the group and names
    /// its leader.
    /// `None` when this node is itself placed in the group (its replica is
    /// starting) or the placement is not known yet.
    pub fn replica_elsewhere(&self, group: GroupId, me: u64) -> Option<std::net::SocketAddr> {
        let placement = self.placement();
        let placed = &placement.groups.get(&group)?.replicas;
        if placed.contains(&me) {
            return None;
        }
        let replicas: Vec<std::net::SocketAddr> = placed
            .iter()
            .filter(|&&r| r != me)
            .filter_map(|r| placement.addresses.get(&crate::raft::NodeId(*r)).copied())
            .collect();
        if replicas.is_empty() {
            return None;
        }
        let turn = self
            .redirects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(replicas[turn % replicas.len()])
    }

    /// What the metadata group last published.
    pub fn placement(&self) -> Arc<Placement> {
        read(&self.placement).clone()
    }

    /// The metadata group applied a change of topics or data groups; every group
    /// is told (a quiesced data group would otherwise see it only at its next
    /// slow tick).
    pub fn publish_placement(&self, placement: Placement) {
        *write(&self.placement) = Arc::new(placement);
        self.tell_all(|| NodeInput::PlacementChanged);
    }

    /// The process's peer liveness record.
    pub fn liveness(&self) -> &crate::liveness::Liveness {
        &self.liveness
    }

    /// Sends `make()` to every group running here, without waiting (a full inbox
    /// is a busy group: it is awake anyway).
    pub fn tell_all(&self, make: impl Fn() -> NodeInput) {
        for inbox in read(&self.inboxes).values() {
            let _ = inbox.try_send(make());
        }
    }

    /// Asks every group led here to hand its leadership to another replica (the
    /// process is about to stop), and waits until none leads a group with other
    /// voters, or `limit`; false if some still do. A leader that stops without
    /// handing over leaves its groups without one for an election timeout.
    pub async fn hand_over(&self, limit: std::time::Duration) -> bool {
        self.handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.tell_all(|| NodeInput::HandOver);
        let leading = || {
            read(&self.status)
                .values()
                .filter(|s| s.role == "leader" && s.voters.len() > 1)
                .count()
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = leading();
            if left == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(groups = left, "stopping while still leading groups");
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is stopping and its groups hand their leadership over.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A group's status changed (role, leader, indexes).
    pub fn publish_status(&self, status: pb::GroupInfo) {
        write(&self.status).insert(status.group_id, status);
    }

    /// The status of every group running here, by id.
    pub fn statuses(&self) -> Vec<pb::GroupInfo> {
        read(&self.status).values().cloned().collect()
    }

    /// A data group's queues' offset ranges.
    pub fn publish_queue_bounds(&self, bounds: impl IntoIterator<Item = ((u32, u32), (u64, u64))>) {
        write(&self.queue_bounds).extend(bounds);
    }

    /// The offset range of a data-group queue, when a replica of its group runs
    /// here (as of its last publication, about a second old at most).
    pub fn queue_bounds(&self, topic_id: u32, queue: u32) -> Option<(u64, u64)> {
        read(&self.queue_bounds).get(&(topic_id, queue)).copied()
    }

    /// Asks the process to start data groups (idempotent: running ones are kept).
    pub fn request_start(&self, request: StartGroups) {
        let _ = self.start.send(request);
    }
}

// A poisoned lock only means a node task panicked while holding it; the maps are
// still whole (every update is a single insert or replace).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(topic: &str, queue: u32) -> pb::request::Body {
        pb::request::Body::Produce(pb::ProduceRequest {
            topic: topic.into(),
            queue,
            ..Default::default()
        })
    }

    #[test]
    fn requests_go_to_the_group_of_their_queue() {
        let (directory, _rx) = GroupDirectory::new();
        let mut topics = BTreeMap::new();
        topics.insert(
            "t".to_string(),
            TopicPlacement {
                id: 1,
                queues: 3,
                retention: TopicRetention::default(),
                groups: vec![2, 3, 1],
            },
        );
        topics.insert(
            "old".to_string(),
            TopicPlacement {
                id: 2,
                queues: 1,
                retention: TopicRetention::default(),
                groups: vec![],
            },
        );
        directory.publish_placement(Placement {
            topics,
            next_topic_id: 3,
            ..Placement::default()
        });
        assert_eq!(directory.route(&produce("t", 0)), 2);
        assert_eq!(directory.route(&produce("t", 2)), 1);
        // Out of range, unknown topics and topics of an earlier version: group 0,
        // which answers them.
        assert_eq!(directory.route(&produce("t", 9)), METADATA_GROUP);
        assert_eq!(directory.route(&produce("nope", 0)), METADATA_GROUP);
        assert_eq!(directory.route(&produce("old", 0)), METADATA_GROUP);
        let fetch = pb::request::Body::Fetch(pb::FetchRequest {
            topic: "t".into(),
            queue: 1,
            ..Default::default()
        });
        assert_eq!(directory.route(&fetch), 3);
        let meta = pb::request::Body::Metadata(pb::MetadataRequest::default());
        assert_eq!(directory.route(&meta), METADATA_GROUP);
    }
}
