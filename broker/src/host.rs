//! Opening and running the Raft groups of this process: the metadata group in the
//! data directory itself (where every earlier version kept its one group), data group
//! `N` in `groups/N/` under it, each with its own commit log, hard state, snapshots
//! and peer links, driven by its own node task.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use raftmq_store::{CommitLog, LogConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cluster::NodeIdentity;
use crate::config::BrokerConfig;
use crate::data_dir_lock::DataDirLock;
use crate::directory::{GroupDirectory, GroupId, StartGroups};
use crate::hard_state::HardStateFile;
use crate::node::{Node, NodeExit};
use crate::raft::{self, MembershipEntry, NodeId, RawNode};
use crate::raft_wire;
use crate::server::StartError;
use crate::snapshot::SnapshotDir;
use crate::transport::PeerTransport;

/// Requests queued for a node task before connections wait.
const NODE_INBOX: usize = 8192;

/// What every group of the process is opened with.
pub(crate) struct GroupOpener {
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) directory: Arc<GroupDirectory>,
    pub(crate) shutdown: CancellationToken,
    /// The links to other nodes, shared by every group.
    pub(crate) peer_links: Arc<crate::transport::PeerLinks>,
}

/// The directory of data group `group` under the data directory.
pub fn data_group_dir(data_dir: &Path, group: GroupId) -> std::path::PathBuf {
    data_dir.join("groups").join(group.to_string())
}

impl GroupOpener {
    /// Opens group `group` from `dir`: recovers its log, restores its state machine
    /// and builds its node task (not yet running).
    pub(crate) fn open(
        &self,
        group: GroupId,
        dir: &Path,
        identity: NodeIdentity,
        bootstrap: MembershipEntry,
    ) -> Result<Node, StartError> {
        let config = &self.config;
        std::fs::create_dir_all(dir).map_err(|error| StartError::DataDir {
            path: dir.to_path_buf(),
            error,
        })?;
        let (hard_state_file, hard_state) = HardStateFile::open(dir, config.node_id)?;
        let log_config = LogConfig {
            segment_bytes: config.segment_bytes,
            // A batch plus the broker's entry header; commands are far smaller.
            max_entry_bytes: (config.max_batch_bytes + 4096) as u32,
            verify_on_open: true,
            max_disk_use_ratio: config.max_disk_use_ratio,
        };
        let (log, report) = CommitLog::open(&dir.join("log"), log_config)?;
        tracing::info!(group, %report, "commit log recovered");
        let snapshot_dir =
            SnapshotDir::open(&dir.join("snapshots")).map_err(crate::node::RecoverError::from)?;
        let (log, state, snapshot_files) = crate::node::recover(log, &snapshot_dir)?;
        // The membership at the log's start: the base snapshot's, else the bootstrap
        // configuration; the core adds the changes the log holds after it.
        let base = crate::cluster::entry_from_state(&state, &bootstrap);
        let mut raft_config = raft::Config::new(config.node_id, base.membership.voters.clone());
        raft_config.learners = base.membership.learners.clone();
        raft_config.membership_context = base.context.clone();
        raft_config.election_timeout_ticks = config.election_timeout_ticks;
        raft_config.heartbeat_interval_ticks = config.heartbeat_interval_ticks;
        raft_config.max_pending_proposals = config.max_pending_proposals;
        if config.quiesce_idle_groups && group != crate::directory::METADATA_GROUP {
            // The metadata group never quiesces: its node task runs the node-level
            // failure detector that wakes the others (see `crate::liveness`).
            raft_config.quiesce_after_ticks = config.election_timeout_ticks;
        }
        raft_config.seed = config.node_id.0 ^ seed_from_time() ^ u64::from(group) << 48;
        let raft = RawNode::try_new(raft_config, log, hard_state)
            .map_err(|e| StartError::Raft(e.to_string()))?;
        // Links follow the membership in effect; the node sets them.
        let transport = PeerTransport::start(
            config.node_id,
            &BTreeMap::new(),
            raft_wire::PeerIdentity {
                cluster_id: identity.cluster_id,
                incarnation: identity.incarnation,
                address: Some(self.local_addr),
            },
            self.peer_links.clone(),
        )
        .for_group(group);
        let node = Node::new(
            config.clone(),
            identity,
            bootstrap,
            raft,
            hard_state_file,
            hard_state,
            transport,
            (state, snapshot_dir, snapshot_files),
        )
        .with_group(group, self.directory.clone());
        Ok(node)
    }

    /// Runs `node` as group `group`'s task, reachable through the directory (it
    /// stops at once if the directory is already closed).
    pub(crate) fn spawn(&self, group: GroupId, node: Node) -> JoinHandle<()> {
        let (tx, rx) = mpsc::channel(NODE_INBOX);
        self.directory.register(group, tx);
        let span = tracing::info_span!("group", id = group);
        let dir = data_group_dir(&self.config.data_dir, group);
        let directory = self.directory.clone();
        tokio::spawn(
            async move {
                if node.run(rx).await == NodeExit::Retired {
                    let _ = tokio::task::spawn_blocking(move || delete_retired_replica(&dir)).await;
                    directory.retired(group);
                }
            }
            .instrument(span),
        )
    }

    /// Starts the data groups the metadata group asks for, until shutdown; then
    /// waits for every node task and releases the data directory.
    pub(crate) async fn supervise(
        self,
        mut requests: mpsc::UnboundedReceiver<StartGroups>,
        metadata: JoinHandle<()>,
        lock: DataDirLock,
    ) {
        let mut tasks = vec![metadata];
        loop {
            let request = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
            };
            let me = self.config.node_id.0;
            for (group, placed) in request.groups {
                // A replica this node still has on disk runs too, placed here or
                // not: it may still count in its group until its leader removes it.
                let dir = data_group_dir(&self.config.data_dir, group);
                // Running: started before and not retired since (or retiring now).
                let running = self.directory.hosts(group) || self.directory.is_retiring(group);
                if running || !(placed.replicas.contains(&me) || dir.exists()) {
                    continue;
                }
                // A first replica starts from the group's first configuration (every
                // first replica the same); a later one joins: it starts knowing no
                // members and waits for the group's leader to add it. So does a
                // first replica that retired here and is placed here again.
                let first: &[u64] =
                    if placed.initial.contains(&me) && !retired_marker(&dir).exists() {
                        &placed.initial
                    } else {
                        &[]
                    };
                let addresses: Option<BTreeMap<NodeId, SocketAddr>> = first
                    .iter()
                    .map(|&v| {
                        let id = NodeId(v);
                        let address = request.addresses.get(&id).or(self.config.peers.get(&id));
                        address.map(|a| (id, *a))
                    })
                    .collect();
                let Some(addresses) = addresses else {
                    tracing::error!(
                        group,
                        replicas = ?first,
                        "cannot start data group: a replica's address is unknown"
                    );
                    continue;
                };
                let bootstrap = crate::cluster::bootstrap_entry(&addresses);
                match self.open(group, &dir, request.identity.clone(), bootstrap) {
                    Ok(mut node) => {
                        if !first.is_empty() && placed.replicas.first() == Some(&me) {
                            node.campaign_soon_if_new();
                        }
                        tracing::info!(
                            group,
                            joining = first.is_empty(),
                            dir = %dir.display(),
                            "data group replica started"
                        );
                        tasks.push(self.spawn(group, node));
                    }
                    Err(e) => {
                        // Requests for it are answered "not running here"; its peers
                        // go on without this replica (it is tried again on the next
                        // placement change).
                        tracing::error!(
                            group,
                            error = %raftmq_proto::error::one_line(&e),
                            "cannot start data group"
                        );
                    }
                }
            }
        }
        for task in tasks {
            let _ = task.await;
        }
        drop(lock);
    }
}

/// The marker left where a retired replica of a group was: this node never
/// again starts that group from its first configuration (an empty log that
/// believes itself a first member could vote as one); it joins if placed here
/// again.
fn retired_marker(dir: &Path) -> std::path::PathBuf {
    dir.with_extension("retired")
}

/// Deletes a retired replica's files, marker first (see [`retired_marker`]). A
/// failure is logged and the files stay: the replica is not started again
/// unless placed here (then as a joining replica, whose leader repairs it).
fn delete_retired_replica(dir: &Path) {
    let marker = retired_marker(dir);
    let written = std::fs::write(&marker, b"retired\n")
        .and_then(|()| std::fs::File::open(&marker)?.sync_all())
        .and_then(|()| match dir.parent() {
            Some(parent) => std::fs::File::open(parent)?.sync_all(),
            None => Ok(()),
        });
    if let Err(e) = written {
        tracing::error!(path = %marker.display(), error = %e, "cannot mark a retired replica; its files are kept");
        return;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => tracing::info!(dir = %dir.display(), "retired replica's files deleted"),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot delete a retired replica's files")
        }
    }
}

/// Seeds election randomness; the Raft core itself never reads a clock.
fn seed_from_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
