//! The consumer-group coordinator: membership, generations and server-side queue
//! assignment, on the leader.
//!
//! Membership is soft state (rebuilt by members rejoining after a failover); the
//! offsets a group commits are Raft commands and survive everything.
//!
//! ## Protocol (incremental, in the spirit of Kafka's KIP-848)
//!
//! - A join, a leave or a member timing out starts a new **generation** and a new
//!   *target* assignment computed by the chosen strategy.
//! - A queue is handed to its new owner only after its previous owner has released
//!   it, so two members never consume one queue at once: a member releases the queues
//!   it lost when it heartbeats with the new generation number, which it does after
//!   committing what it processed from them.
//! - Each heartbeat answers with the generation and the member's current assignment
//!   (its target minus queues still held by others); the member adopts it.
//! - Commits and group fetches are accepted only for queues the member holds, and
//!   never with a generation older than the one it has confirmed: a member that was
//!   replaced is fenced with a typed error.
//!
//! Pure: the caller passes the time (milliseconds of a monotonic clock), so every
//! scenario is a unit test.

pub mod assign;

use std::collections::{BTreeMap, BTreeSet};

use raftmq_proto::pb::ErrorCode;

pub use assign::{Strategy, TopicQueue};

/// Most groups one coordinator tracks.
pub const MAX_GROUPS: usize = 10_000;
/// Most members in one group.
pub const MAX_MEMBERS_PER_GROUP: usize = 1_000;
/// Session timeout bounds (ms); 0 in a join means the default.
pub const SESSION_TIMEOUT_MS_MIN: u64 = 100;
/// Upper bound of a session timeout.
pub const SESSION_TIMEOUT_MS_MAX: u64 = 300_000;
/// Session timeout when the join does not give one.
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// A refusal, with the protocol error code to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GroupError {
    /// The code for the client.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> GroupError {
    GroupError {
        code,
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout_ms: u64,
    deadline_ms: u64,
    /// The newest generation this member has confirmed (sent back in a heartbeat).
    confirmed_generation: u64,
}

#[derive(Debug, Clone)]
struct Group {
    generation: u64,
    strategy: Strategy,
    members: BTreeMap<String, Member>,
    target: BTreeMap<String, BTreeSet<TopicQueue>>,
    /// Queue → the member that holds it now (was told it owns it, not yet released).
    holders: BTreeMap<TopicQueue, String>,
}

/// What a member is told after a join or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Its id (assigned on first join).
    pub member_id: String,
    /// The group's generation.
    pub generation: u64,
    /// The queues it owns now.
    pub assignment: Vec<TopicQueue>,
    /// How often it should heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// A member as shown by `describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Id.
    pub member_id: String,
    /// Client-chosen name.
    pub client_id: String,
    /// Queues it holds.
    pub assignment: Vec<TopicQueue>,
}

/// All groups of this coordinator.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    next_member: u64,
    /// Part of every member id given (see [`Coordinator::lead`]).
    id_scope: String,
}

impl Coordinator {
    /// No groups.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every member (this node stopped leading: members rejoin the new leader).
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// Starts a leadership: forgets every member, and every member id given from
    /// now on carries `scope` (the node and its term), so that no other leadership
    /// ever gives the same id. Members keep their ids across a failover: a member
    /// that rejoins the new leader with the id an earlier leader gave it must not
    /// meet a new member that the new leader gave that same id, or the two
    /// processes would act as one member and both read every queue it holds.
    pub fn lead(&mut self, scope: impl Into<String>) {
        self.groups.clear();
        self.id_scope = scope.into();
    }

    /// Whether the group has live members.
    pub fn has_members(&self, group: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| !g.members.is_empty())
    }

    /// Names of groups with live members.
    pub fn group_names(&self) -> impl Iterator<Item = &String> {
        self.groups.keys()
    }

    /// A member joins (or rejoins). `queue_counts`: every topic's queue count.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        group: &str,
        member_id: &str,
        client_id: &str,
        topics: &[String],
        session_timeout_ms: u64,
        strategy: Strategy,
        queue_counts: &BTreeMap<String, u32>,
        now_ms: u64,
    ) -> Result<MemberView, GroupError> {
        if topics.is_empty() {
            return Err(refuse(
                ErrorCode::InvalidRequest,
                "subscribe to at least one topic",
            ));
        }
        if !self.groups.contains_key(group) && self.groups.len() >= MAX_GROUPS {
            return Err(refuse(ErrorCode::Busy, "too many consumer groups"));
        }
        let session_timeout_ms = match session_timeout_ms {
            0 => SESSION_TIMEOUT_MS_DEFAULT,
            t => t.clamp(SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX),
        };
        let member_id = if member_id.is_empty() {
            self.next_member += 1;
            let prefix = if client_id.is_empty() {
                "member"
            } else {
                client_id
            };
            if self.id_scope.is_empty() {
                format!("{prefix}-{}", self.next_member)
            } else {
                format!("{prefix}-{}-{}", self.id_scope, self.next_member)
            }
        } else {
            member_id.to_string()
        };
        let g = self
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group {
                generation: 0,
                strategy,
                members: BTreeMap::new(),
                target: BTreeMap::new(),
                holders: BTreeMap::new(),
            });
        let topics: BTreeSet<String> = topics.iter().cloned().collect();
        let changed = match g.members.get(&member_id) {
            Some(m) => m.topics != topics,
            None => {
                if g.members.len() >= MAX_MEMBERS_PER_GROUP {
                    return Err(refuse(ErrorCode::Busy, "too many members in this group"));
                }
                true
            }
        };
        // A (re)joining member starts from committed offsets: it holds nothing now.
        g.holders.retain(|_, holder| *holder != member_id);
        g.members.insert(
            member_id.clone(),
            Member {
                client_id: client_id.to_string(),
                topics,
                session_timeout_ms,
                deadline_ms: now_ms + session_timeout_ms,
                confirmed_generation: 0,
            },
        );
        g.strategy = strategy;
        if changed {
            g.rebalance(queue_counts);
        }
        let generation = g.generation;
        g.members
            .get_mut(&member_id)
            .expect("just inserted")
            .confirmed_generation = generation;
        Ok(g.view(&member_id))
    }

    /// A member's heartbeat with the generation it is working in.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        generation: u64,
        now_ms: u64,
    ) -> Result<MemberView, GroupError> {
        let g = self.member_group(group, member_id)?;
        let current = g.generation;
        let member = g.members.get_mut(member_id).expect("checked");
        if generation > current {
            return Err(refuse(
                ErrorCode::StaleGeneration,
                format!("generation {generation} is from the future (current {current})"),
            ));
        }
        member.deadline_ms = now_ms + member.session_timeout_ms;
        if generation == current {
            member.confirmed_generation = current;
            // It adopted this generation: what it lost is released.
            let target = g.target.get(member_id).cloned().unwrap_or_default();
            g.holders
                .retain(|tq, holder| holder != member_id || target.contains(tq));
        }
        Ok(g.view(member_id))
    }

    /// A member leaves: its queues are released and the group rebalances.
    pub fn leave(
        &mut self,
        group: &str,
        member_id: &str,
        queue_counts: &BTreeMap<String, u32>,
    ) -> Result<(), GroupError> {
        let g = self.member_group(group, member_id)?;
        g.remove(member_id);
        g.rebalance(queue_counts);
        if g.members.is_empty() {
            self.groups.remove(group);
        }
        Ok(())
    }

    /// Removes members whose session ended; returns (group, member) of each.
    pub fn expire(
        &mut self,
        now_ms: u64,
        queue_counts: &BTreeMap<String, u32>,
    ) -> Vec<(String, String)> {
        let mut expired = Vec::new();
        for (name, g) in &mut self.groups {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| m.deadline_ms <= now_ms)
                .map(|(id, _)| id.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            for id in dead {
                g.remove(&id);
                expired.push((name.clone(), id));
            }
            g.rebalance(queue_counts);
        }
        self.groups.retain(|_, g| !g.members.is_empty());
        expired
    }

    /// Checks that `member_id` may commit (or fetch) these queues with `generation`.
    /// An empty member id is a standalone commit, allowed only while the group has no
    /// members.
    pub fn check_owner(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        queues: &[TopicQueue],
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if self.has_members(group) {
                return Err(refuse(
                    ErrorCode::UnknownMember,
                    "the group has members: commit with a member id and generation",
                ));
            }
            return Ok(());
        }
        let g = self.groups.get(group).ok_or_else(|| {
            refuse(
                ErrorCode::UnknownMember,
                format!("unknown member {member_id:?}"),
            )
        })?;
        let m = g.members.get(member_id).ok_or_else(|| {
            refuse(
                ErrorCode::UnknownMember,
                format!("unknown member {member_id:?}"),
            )
        })?;
        if generation < m.confirmed_generation || generation > g.generation {
            return Err(refuse(
                ErrorCode::StaleGeneration,
                format!(
                    "generation {generation} is stale (member confirmed {}, group is at {})",
                    m.confirmed_generation, g.generation
                ),
            ));
        }
        for tq in queues {
            if g.holders.get(tq).map(String::as_str) != Some(member_id) {
                return Err(refuse(
                    ErrorCode::StaleGeneration,
                    format!("{}/{} is not assigned to {member_id:?}", tq.0, tq.1),
                ));
            }
        }
        Ok(())
    }

    /// A group's generation (0 when it has no members).
    pub fn generation(&self, group: &str) -> u64 {
        self.groups.get(group).map_or(0, |g| g.generation)
    }

    /// Generation and members of a group (None when it has no members).
    pub fn describe(&self, group: &str) -> Option<(u64, Vec<MemberInfo>)> {
        let g = self.groups.get(group)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| MemberInfo {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                assignment: g.held_by(id),
            })
            .collect();
        Some((g.generation, members))
    }

    fn member_group(&mut self, group: &str, member_id: &str) -> Result<&mut Group, GroupError> {
        let unknown = || {
            refuse(
                ErrorCode::UnknownMember,
                format!("unknown member {member_id:?}"),
            )
        };
        let g = self.groups.get_mut(group).ok_or_else(unknown)?;
        if !g.members.contains_key(member_id) {
            return Err(unknown());
        }
        Ok(g)
    }
}

impl Group {
    fn remove(&mut self, member_id: &str) {
        self.members.remove(member_id);
        self.target.remove(member_id);
        self.holders.retain(|_, holder| holder != member_id);
    }

    fn rebalance(&mut self, queue_counts: &BTreeMap<String, u32>) {
        self.generation += 1;
        let subscriptions = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.topics.clone()))
            .collect();
        let counts = queue_counts
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(*t)))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        self.target = assign::assign(self.strategy, &subscriptions, &counts, &self.target);
        // Queues of deleted topics or no longer subscribed are released at once.
        let target = &self.target;
        self.holders.retain(|tq, holder| {
            target.contains_key(holder) && target.values().any(|set| set.contains(tq))
        });
    }

    /// Grants the member every target queue nobody else holds, and returns its view.
    fn view(&mut self, member_id: &str) -> MemberView {
        if let Some(target) = self.target.get(member_id) {
            for tq in target {
                self.holders
                    .entry(tq.clone())
                    .or_insert_with(|| member_id.to_string());
            }
        }
        let timeout = self.members[member_id].session_timeout_ms;
        // What it owns from now on: its target, as far as others have released it.
        // Queues it lost stay held (committable) until it confirms this generation.
        let target = self.target.get(member_id);
        let assignment = self
            .held_by(member_id)
            .into_iter()
            .filter(|tq| target.is_some_and(|t| t.contains(tq)))
            .collect();
        MemberView {
            member_id: member_id.to_string(),
            generation: self.generation,
            assignment,
            heartbeat_interval_ms: (timeout / 3).max(1),
        }
    }

    fn held_by(&self, member_id: &str) -> Vec<TopicQueue> {
        self.holders
            .iter()
            .filter(|(_, holder)| holder.as_str() == member_id)
            .map(|(tq, _)| tq.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> BTreeMap<String, u32> {
        [("t".to_string(), 8)].into()
    }

    fn topics() -> Vec<String> {
        vec!["t".to_string()]
    }

    fn join(c: &mut Coordinator, id: &str, now: u64) -> MemberView {
        c.join(
            "g",
            id,
            "app",
            &topics(),
            1000,
            Strategy::Range,
            &counts(),
            now,
        )
        .unwrap()
    }

    /// Two consumers of one group across a failover: one keeps the id the old
    /// leader gave it, the other was forgotten and joins anew. They must stay two
    /// members, each reading half the queues.
    #[test]
    fn ids_given_by_different_leaderships_never_collide() {
        let mut old_leader = Coordinator::new();
        old_leader.lead("n1t3");
        let a = join(&mut old_leader, "", 0);
        let mut new_leader = Coordinator::new();
        new_leader.lead("n2t4");
        let rejoined = join(&mut new_leader, &a.member_id, 10);
        assert_eq!(rejoined.member_id, a.member_id);
        let b = join(&mut new_leader, "", 10);
        assert_ne!(b.member_id, a.member_id);
        // A leader that leads again, in a later term, gives other ids too.
        old_leader.lead("n1t5");
        let c = join(&mut old_leader, "", 20);
        assert_ne!(c.member_id, a.member_id);
        let (_, members) = new_leader.describe("g").expect("the group has members");
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn a_queue_moves_only_after_its_previous_owner_released_it() {
        let mut c = Coordinator::new();
        let a = join(&mut c, "", 0);
        assert_eq!(a.assignment.len(), 8);
        let b = join(&mut c, "", 10);
        // b's share is still held by a: nothing yet.
        assert!(b.assignment.is_empty());
        assert_eq!(b.generation, a.generation + 1);
        // a heartbeats with its old generation: it is told its smaller assignment.
        let a2 = c.heartbeat("g", &a.member_id, a.generation, 20).unwrap();
        assert_eq!(a2.assignment.len(), 4);
        // Until a confirms the new generation it still holds (and may commit) all 8.
        c.check_owner("g", &a.member_id, a.generation, &[("t".into(), 7)])
            .unwrap();
        c.heartbeat("g", &a.member_id, a2.generation, 30).unwrap();
        let b2 = c.heartbeat("g", &b.member_id, b.generation, 40).unwrap();
        assert_eq!(b2.assignment.len(), 4);
        let all: BTreeSet<TopicQueue> = a2
            .assignment
            .iter()
            .chain(&b2.assignment)
            .cloned()
            .collect();
        assert_eq!(all.len(), 8, "disjoint and covering");
    }

    #[test]
    fn a_member_that_stops_heartbeating_is_removed_and_its_queues_reassigned() {
        let mut c = Coordinator::new();
        let a = join(&mut c, "", 0);
        let b = join(&mut c, "", 0);
        c.heartbeat("g", &a.member_id, a.generation, 0).unwrap();
        let a = c.heartbeat("g", &a.member_id, b.generation, 500).unwrap();
        assert_eq!(a.assignment.len(), 4);
        // b never heartbeats again; after its session timeout it is gone.
        let expired = c.expire(1001, &counts());
        assert_eq!(expired, vec![("g".to_string(), b.member_id.clone())]);
        let a = c.heartbeat("g", &a.member_id, a.generation, 1002).unwrap();
        assert_eq!(a.assignment.len(), 8, "coverage restored");
    }

    #[test]
    fn stale_generation_commits_are_rejected() {
        let mut c = Coordinator::new();
        let a = join(&mut c, "", 0);
        let a = c.heartbeat("g", &a.member_id, a.generation, 1).unwrap();
        join(&mut c, "", 2);
        let a2 = c.heartbeat("g", &a.member_id, a.generation, 3).unwrap();
        c.heartbeat("g", &a.member_id, a2.generation, 4).unwrap();
        let err = c
            .check_owner("g", &a.member_id, a.generation, &[("t".into(), 0)])
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::StaleGeneration);
    }

    #[test]
    fn commits_for_queues_owned_by_another_member_are_rejected() {
        let mut c = Coordinator::new();
        let a = join(&mut c, "", 0);
        let a = c.heartbeat("g", &a.member_id, a.generation, 1).unwrap();
        let foreign = ("t".to_string(), 0);
        let err = c.check_owner("g", "nobody", a.generation, std::slice::from_ref(&foreign));
        assert_eq!(err.unwrap_err().code, ErrorCode::UnknownMember);
    }

    #[test]
    fn standalone_commits_are_refused_while_the_group_has_members() {
        let mut c = Coordinator::new();
        assert!(c.check_owner("g", "", 0, &[]).is_ok());
        join(&mut c, "", 0);
        assert_eq!(
            c.check_owner("g", "", 0, &[]).unwrap_err().code,
            ErrorCode::UnknownMember
        );
    }

    #[test]
    fn leaving_releases_queues_at_once() {
        let mut c = Coordinator::new();
        let a = join(&mut c, "", 0);
        let b = join(&mut c, "", 0);
        let a = c.heartbeat("g", &a.member_id, a.generation, 1).unwrap();
        let a = c.heartbeat("g", &a.member_id, a.generation, 1).unwrap();
        c.leave("g", &b.member_id, &counts()).unwrap();
        let a = c.heartbeat("g", &a.member_id, a.generation, 2).unwrap();
        assert_eq!(a.assignment.len(), 8);
    }
}
