//! This node task's part in a cluster of several Raft groups (see
//! [`crate::directory`]):
//!
//! - every group publishes its status (role, leader, indexes) for metadata answers;
//! - the metadata group publishes the placement it applied, writes the number of
//!   data groups into its log once (from `data_groups` in the first leader's
//!   configuration), and asks the process to start the data groups it applied;
//! - a data group's leader mirrors the metadata group's topics into its own log (a
//!   data group takes batches only for topics it holds: every replica applies the
//!   same entries, whatever its local metadata replica has seen so far), and hands
//!   its leadership to the group's preferred leader when that node is caught up, so
//!   leaders spread over the nodes and come back after a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_proto::pb;
use raftmq_store::{EntryKind, LogIndex};

use super::{role_name, Node};
use crate::command::Command;
use crate::directory::METADATA_GROUP;
use crate::directory::{GroupDirectory, GroupId, Placement, StartGroups, TopicPlacement};
use crate::raft::{NodeId, Role};

/// How often a data group's leader checks whether its preferred leader should lead.
const LEADER_BALANCE_INTERVAL: Duration = Duration::from_secs(2);
/// Mirror commands proposed per pass (the rest follow once these are applied).
const MIRROR_BATCH: usize = 64;

/// The node task's state for the above.
pub(super) struct RaftGroups {
    pub(super) group: GroupId,
    pub(super) directory: Arc<GroupDirectory>,
    /// The metadata group's placement changed since it was last published.
    placement_dirty: bool,
    /// The status last published.
    published: Option<pb::GroupInfo>,
    /// Data groups this metadata group already asked the process to start.
    started: u32,
    /// When the metadata leader last proposed the data groups.
    proposed_at: Option<Instant>,
    /// The last mirror command proposed (none in flight once it is applied).
    mirror_index: LogIndex,
    balanced_at: Option<Instant>,
    /// A differing `data_groups` setting was reported.
    mismatch_reported: bool,
}

impl RaftGroups {
    pub(super) fn new(group: GroupId, directory: Arc<GroupDirectory>) -> RaftGroups {
        RaftGroups {
            group,
            directory,
            placement_dirty: true,
            published: None,
            started: 0,
            proposed_at: None,
            mirror_index: LogIndex::ZERO,
            balanced_at: None,
            mismatch_reported: false,
        }
    }
}

/// The preferred leader of data group `group` over `voters`: the groups take turns,
/// so N groups over N nodes have one leader each.
pub fn preferred_leader(group: GroupId, voters: &[u64]) -> Option<u64> {
    if group == METADATA_GROUP || voters.is_empty() {
        return None;
    }
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    Some(sorted[(group as usize - 1) % sorted.len()])
}

impl Node {
    /// Makes this node task drive `group` of the process's `directory`.
    pub fn with_group(mut self, group: GroupId, directory: Arc<GroupDirectory>) -> Node {
        self.raft_groups = RaftGroups::new(group, directory);
        self
    }

    /// The group this node task drives.
    pub(super) fn group_id(&self) -> GroupId {
        self.raft_groups.group
    }

    /// Every tick.
    pub(super) fn raft_groups_upkeep(&mut self, now: Instant) {
        self.publish_status();
        if self.group_id() == METADATA_GROUP {
            self.publish_placement();
            self.propose_data_groups(now);
            self.start_data_groups();
        } else {
            self.mirror_topics();
            self.balance_leadership(now);
        }
    }

    /// An applied entry changed topics or data groups (metadata group).
    pub(super) fn placement_changed(&mut self) {
        self.raft_groups.placement_dirty = true;
    }

    fn publish_status(&mut self) {
        let voters: Vec<u64> = self
            .raft
            .membership()
            .voters
            .iter()
            .map(|id| id.0)
            .collect();
        let info = pb::GroupInfo {
            group_id: self.group_id(),
            leader_id: self.raft.leader().map_or(0, |l| l.0),
            term: self.raft.term().0,
            role: role_name(self.raft.role()).to_string(),
            commit_index: self.raft.commit_index().0,
            applied_index: self.state.applied().0,
            last_index: self.raft.log().last_index().0,
            preferred_leader_id: preferred_leader(self.group_id(), &voters).unwrap_or(0),
            voters,
        };
        if self.raft_groups.published.as_ref() != Some(&info) {
            self.raft_groups.directory.publish_status(info.clone());
            self.raft_groups.published = Some(info);
        }
    }

    fn publish_placement(&mut self) {
        if !self.raft_groups.placement_dirty {
            return;
        }
        self.raft_groups.placement_dirty = false;
        let topics = self
            .state
            .topics()
            .map(|t| {
                (
                    t.name.clone(),
                    TopicPlacement {
                        id: t.id,
                        queues: t.queues.len() as u32,
                        retention: t.retention,
                        groups: t.groups.clone(),
                    },
                )
            })
            .collect();
        self.raft_groups.directory.publish_placement(Placement {
            topics,
            next_topic_id: self.state.next_topic_id(),
            data_groups: self.state.data_groups(),
            voters: self.state.data_group_voters().to_vec(),
        });
    }

    /// Metadata leader: writes `data_groups` into the log once the cluster has its
    /// id (so that the data groups are born into a known cluster).
    fn propose_data_groups(&mut self, now: Instant) {
        let wanted = self.config.data_groups;
        let have = self.state.data_groups();
        if have != 0 {
            if wanted != 0 && wanted != have && !self.raft_groups.mismatch_reported {
                self.raft_groups.mismatch_reported = true;
                tracing::warn!(
                    configured = wanted,
                    cluster = have,
                    "data_groups differs from the cluster's, which is fixed: using the cluster's"
                );
            }
            return;
        }
        if wanted == 0
            || !self.leader_ready()
            || self.members.view.cluster_id == 0
            || self.raft.membership_change_pending().is_some()
            || !self.raft.membership().learners.is_empty()
        {
            return;
        }
        if self
            .raft_groups
            .proposed_at
            .is_some_and(|t| now.duration_since(t) < self.election_timeout())
        {
            return;
        }
        self.raft_groups.proposed_at = Some(now);
        let voters = self.raft.membership().voters.iter().map(|v| v.0).collect();
        let command = Command::SetDataGroups {
            count: wanted,
            voters,
        };
        match self.raft.propose(EntryKind::Command, command.encode()) {
            Ok((index, _)) => {
                tracing::info!(
                    index = index.0,
                    data_groups = wanted,
                    "creating the data groups"
                )
            }
            Err(e) => tracing::debug!(error = %e, "data groups deferred"),
        }
    }

    /// Metadata group: asks the process to start the data groups it applied.
    fn start_data_groups(&mut self) {
        let count = self.state.data_groups();
        if count <= self.raft_groups.started || self.identity.cluster_id == 0 {
            return;
        }
        self.raft_groups.started = count;
        let voters = self.state.data_group_voters().to_vec();
        if !voters.contains(&self.config.node_id.0) {
            return;
        }
        self.raft_groups.directory.request_start(StartGroups {
            count,
            voters,
            identity: self.identity.clone(),
            addresses: self.member_addresses(),
        });
    }

    /// The address of every member this node knows.
    fn member_addresses(&self) -> BTreeMap<NodeId, std::net::SocketAddr> {
        self.members
            .view
            .members
            .iter()
            .map(|(id, m)| (*id, m.address))
            .collect()
    }

    /// Data-group leader: proposes the topics the metadata group placed here and
    /// not yet in this group's log, and deletes the ones it deleted.
    fn mirror_topics(&mut self) {
        if !self.leader_ready() || self.state.applied() < self.raft_groups.mirror_index {
            return;
        }
        let placement = self.raft_groups.directory.placement();
        if placement.data_groups == 0 {
            return;
        }
        let group = self.group_id();
        let mut commands = Vec::new();
        for topic in self.state.topics() {
            let current = placement.topics.get(&topic.name).map(|t| t.id);
            // A lower id the metadata group no longer has under this name was
            // deleted there (a higher one is newer than what it applied so far).
            if current != Some(topic.id) && topic.id < placement.next_topic_id {
                commands.push(Command::DeleteTopic {
                    name: topic.name.clone(),
                });
            }
        }
        for (name, topic) in &placement.topics {
            if topic.groups.contains(&group) && self.state.topic_by_id(topic.id).is_none() {
                commands.push(Command::MirrorTopic {
                    id: topic.id,
                    name: name.clone(),
                    queues: topic.queues,
                    retention: topic.retention,
                });
            }
        }
        for command in commands.into_iter().take(MIRROR_BATCH) {
            match self.raft.propose(EntryKind::Command, command.encode()) {
                Ok((index, _)) => self.raft_groups.mirror_index = index,
                Err(e) => {
                    tracing::debug!(error = %e, "topic mirroring deferred");
                    break;
                }
            }
        }
    }

    /// Data-group leader: hands over to the preferred leader once it is caught up
    /// and heard from.
    fn balance_leadership(&mut self, now: Instant) {
        if self.raft.role() != Role::Leader {
            self.raft_groups.balanced_at = None;
            return;
        }
        let Some(at) = self.raft_groups.balanced_at else {
            // Leading since about now: give the group time to settle first.
            self.raft_groups.balanced_at = Some(now);
            return;
        };
        if now.duration_since(at) < LEADER_BALANCE_INTERVAL || !self.leader_ready() {
            return;
        }
        self.raft_groups.balanced_at = Some(now);
        let voters: Vec<u64> = self.raft.membership().voters.iter().map(|v| v.0).collect();
        let Some(preferred) = preferred_leader(self.group_id(), &voters) else {
            return;
        };
        if preferred == self.config.node_id.0 || self.raft.membership_change_pending().is_some() {
            return;
        }
        let status = self.raft.status();
        let last = self.raft.log().last_index();
        let ready = status.progress.iter().any(|p| {
            p.id.0 == preferred && p.voter && p.recent_active && p.match_index >= last.prev()
        });
        if !ready {
            return;
        }
        match self.raft.transfer_leadership(NodeId(preferred)) {
            Ok(()) => tracing::info!(to = preferred, "handing leadership to the preferred leader"),
            Err(e) => tracing::debug!(error = %e, "leader balancing deferred"),
        }
    }

    /// The data groups this node runs, for metadata and status answers.
    pub(super) fn data_group_infos(&self) -> Vec<pb::GroupInfo> {
        let mut infos = self.raft_groups.directory.statuses();
        infos.retain(|g| g.group_id != METADATA_GROUP);
        infos
    }

    /// Membership changes move data-group replicas, which this version cannot do
    /// yet: refused while data groups exist.
    pub(super) fn membership_changes_refused(&self) -> Option<String> {
        (self.state.data_groups() > 0).then(|| {
            format!(
                "this cluster has {} data groups, and changing its members (which moves \
                 data-group replicas) is not supported yet",
                self.state.data_groups()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_leaders_take_turns_over_the_sorted_voters() {
        let voters = [3, 1, 2];
        let leaders: Vec<_> = (1..=6)
            .map(|g| preferred_leader(g, &voters).unwrap())
            .collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(preferred_leader(METADATA_GROUP, &voters), None);
        assert_eq!(preferred_leader(1, &[]), None);
    }
}
