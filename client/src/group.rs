//! [`GroupConsumer`]: a member of a consumer group reading one topic. The broker's
//! group coordinator assigns the topic's queues among the members; committed
//! offsets are Raft commands, so they survive a leader change.
//!
//! No background task: [`GroupConsumer::poll`] commits the positions reached by the
//! previous poll (with auto-commit), heartbeats when due, adopts a new assignment
//! when the group's generation moved, then fetches. Call `poll` more often than the
//! session timeout or the broker will drop the member. Delivery is at least once: a
//! rebalance can hand a queue over before its last messages were committed.

use std::collections::BTreeMap;
use std::time::Duration;

use raftmq_proto::pb::{self, request, response};
use raftmq_proto::ServerError;
use tokio::time::Instant;

use crate::client::unexpected;
use crate::consumer::Fencing;
use crate::{Client, ClientError, ConsumedMessage, Consumer, ConsumerConfig, Target};

/// Group membership settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The broker drops a member that has not heartbeated for this long. Default 10 s.
    pub session_timeout: Duration,
    /// How the coordinator splits queues. Default range.
    pub strategy: pb::AssignmentStrategy,
    /// Shown in `DescribeGroup`. Default `"raftmq-client"`.
    pub client_id: String,
    /// Commit the positions reached by each poll at the start of the next one
    /// (and on `leave`). Default on.
    pub auto_commit: bool,
    /// Joins tried while the group is rebalancing. Default 20.
    pub max_join_attempts: u32,
    /// Fetch settings (the long-poll wait is capped at half the heartbeat interval).
    pub consumer: ConsumerConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout: Duration::from_secs(10),
            strategy: pb::AssignmentStrategy::Range,
            client_id: "raftmq-client".into(),
            auto_commit: true,
            max_join_attempts: 20,
            consumer: ConsumerConfig::default(),
        }
    }
}

/// A change of this member's queues, as the application sees it: what it no longer
/// reads (its positions were committed first, with auto-commit) and what it starts
/// reading (from the group's committed offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    /// The group generation the change belongs to.
    pub generation: u64,
    /// Queues taken away from this member.
    pub revoked: Vec<u32>,
    /// Queues given to this member.
    pub assigned: Vec<u32>,
}

/// Most rebalance events kept until the application takes them.
const REBALANCE_EVENTS_MAX: usize = 64;

/// A consumer-group member reading the queues of one topic assigned to it.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    consumer: Consumer,
    group: String,
    topic: String,
    member_id: String,
    generation: u64,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    /// Heartbeats come every [`REBALANCE_HEARTBEAT`] until then (see
    /// [`GroupConsumer::heartbeat_gap`]).
    rebalancing_until: Instant,
    /// Last offsets committed per queue.
    committed: BTreeMap<u32, u64>,
    /// Assignment changes not yet taken by [`GroupConsumer::take_rebalances`].
    rebalances: Vec<Rebalance>,
}

/// How often a member heartbeats for two heartbeat intervals after its generation
/// changed. Queues change hands then, and each step is a heartbeat: the old owner
/// confirms the new generation (which releases what it lost), the new owner asks
/// again and is given it. At the regular interval (a third of the session
/// timeout) a queue took up to three intervals to move, about 10 s by default.
const REBALANCE_HEARTBEAT: Duration = Duration::from_millis(250);

/// Whether the group moved on without this member's knowledge: rejoin.
fn needs_rejoin(e: &ClientError) -> bool {
    matches!(
        e.server_error(),
        Some(
            ServerError::UnknownMember { .. }
                | ServerError::StaleGeneration { .. }
                | ServerError::RebalanceInProgress { .. }
        )
    )
}

impl GroupConsumer {
    /// Joins `group` to read `topic`, starting each assigned queue at the group's
    /// committed offset (or per the reset policy when none).
    pub async fn join(
        client: &Client,
        group: &str,
        topic: &str,
        config: GroupConfig,
    ) -> Result<GroupConsumer, ClientError> {
        raftmq_proto::frame::validate_name(group)?;
        let mut member = GroupConsumer {
            client: client.clone(),
            consumer: Consumer::with_config(client, config.consumer.clone()),
            config,
            group: group.to_owned(),
            topic: topic.to_owned(),
            member_id: String::new(),
            generation: 0,
            heartbeat_interval: Duration::from_secs(3),
            next_heartbeat: Instant::now(),
            rebalancing_until: Instant::now(),
            committed: BTreeMap::new(),
            rebalances: Vec::new(),
        };
        member.rejoin().await?;
        Ok(member)
    }

    /// The id the coordinator gave this member.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The time between heartbeats: [`REBALANCE_HEARTBEAT`] while queues may be
    /// changing hands, else the interval the coordinator asked for.
    fn heartbeat_gap(&self) -> Duration {
        if Instant::now() < self.rebalancing_until {
            self.heartbeat_interval.min(REBALANCE_HEARTBEAT)
        } else {
            self.heartbeat_interval
        }
    }

    /// The group generation this member is in.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The assignment changes since the last call, oldest first (at most 64 are
    /// kept): revoked queues were committed before they were dropped (with
    /// auto-commit), assigned ones start at the group's committed offsets.
    pub fn take_rebalances(&mut self) -> Vec<Rebalance> {
        std::mem::take(&mut self.rebalances)
    }

    /// The queues assigned to this member.
    pub fn assignment(&self) -> Vec<u32> {
        self.consumer.positions().keys().copied().collect()
    }

    /// Positions (next offset to read) of the assigned queues.
    pub fn positions(&self) -> &BTreeMap<u32, Option<u64>> {
        self.consumer.positions()
    }

    /// Sets the next offset to read (and to commit) for an assigned queue, without
    /// asking the broker; ignored for a queue not assigned.
    pub fn seek(&mut self, queue: u32, offset: u64) {
        self.consumer.set_position(queue, offset);
    }

    async fn rejoin(&mut self) -> Result<(), ClientError> {
        let mut attempt = 0;
        let joined = loop {
            let body = request::Body::JoinGroup(pb::JoinGroupRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                topics: vec![self.topic.clone()],
                session_timeout_ms: u32::try_from(self.config.session_timeout.as_millis())
                    .unwrap_or(u32::MAX),
                strategy: self.config.strategy as i32,
                client_id: self.config.client_id.clone(),
            });
            match self.client.request(Target::Leader, body).await {
                Ok(response::Body::JoinGroup(j)) => break j,
                Ok(other) => return Err(unexpected("join_group", &other)),
                Err(e) if needs_rejoin(&e) && attempt + 1 < self.config.max_join_attempts => {
                    if matches!(e.server_error(), Some(ServerError::UnknownMember { .. })) {
                        self.member_id.clear();
                    }
                    tokio::time::sleep(self.client.config().backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        self.member_id = joined.member_id;
        self.heartbeat_interval = Duration::from_millis(u64::from(joined.heartbeat_interval_ms))
            .max(Duration::from_millis(10));
        self.consumer.config.max_wait = self
            .config
            .consumer
            .max_wait
            .min(self.heartbeat_interval / 2);
        self.next_heartbeat = Instant::now() + self.heartbeat_gap();
        // A (re)joining member held nothing while it was away: another member may
        // have read and committed its queues meanwhile, so every queue is checked
        // against the group's committed offset, not only the new ones.
        self.adopt(joined.generation, joined.assignment, true).await
    }

    /// Takes a new generation's assignment: keeps positions of queues kept, starts
    /// new ones at the group's committed offsets.
    async fn adopt(
        &mut self,
        generation: u64,
        assignment: Vec<pb::TopicQueue>,
        recheck_kept: bool,
    ) -> Result<(), ClientError> {
        if generation != self.generation {
            // Confirm the new generation at once (releasing what this member
            // lost), and follow the handover closely for a while.
            let now = Instant::now();
            self.rebalancing_until = now + 2 * self.heartbeat_interval;
            self.next_heartbeat = now;
        }
        self.generation = generation;
        let queues: Vec<u32> = assignment
            .into_iter()
            .filter(|tq| tq.topic == self.topic)
            .map(|tq| tq.queue)
            .collect();
        let before: Vec<u32> = self.assignment();
        let revoked: Vec<u32> = before
            .iter()
            .copied()
            .filter(|q| !queues.contains(q))
            .collect();
        let assigned: Vec<u32> = queues
            .iter()
            .copied()
            .filter(|q| !before.contains(q))
            .collect();
        if !revoked.is_empty() || !assigned.is_empty() {
            if self.rebalances.len() >= REBALANCE_EVENTS_MAX {
                self.rebalances.remove(0);
            }
            self.rebalances.push(Rebalance {
                generation,
                revoked,
                assigned,
            });
        }
        self.consumer.reassign(&self.topic, &queues);
        self.consumer.fencing = Some(Fencing {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            generation,
        });
        self.committed.retain(|q, _| queues.contains(q));
        let gained: Vec<pb::TopicQueue> = queues
            .iter()
            .filter(|q| recheck_kept || !before.contains(q))
            .map(|&queue| pb::TopicQueue {
                topic: self.topic.clone(),
                queue,
            })
            .collect();
        tracing::debug!(group = %self.group, generation, ?queues, "assignment");
        if gained.is_empty() {
            return Ok(());
        }
        let body = request::Body::OffsetFetch(pb::OffsetFetchRequest {
            group: self.group.clone(),
            queues: gained,
        });
        match self.client.request(Target::Leader, body).await? {
            response::Body::OffsetFetch(f) => {
                for o in f.offsets.into_iter().filter(|o| o.topic == self.topic) {
                    // Never behind the group (someone else went further), never
                    // behind what this member itself already processed.
                    let local = self.consumer.positions().get(&o.queue).copied().flatten();
                    let position = local.map_or(o.offset, |p| p.max(o.offset));
                    self.consumer.set_position(o.queue, position);
                    self.committed.insert(o.queue, o.offset);
                }
                Ok(())
            }
            other => Err(unexpected("offset_fetch", &other)),
        }
    }

    /// Commits the current positions of the assigned queues (those that moved).
    ///
    /// When the group has moved on meanwhile (a leader change makes the new
    /// coordinator forget members; a rebalance bumps the generation), the member
    /// rejoins and commits again the positions of the queues it still holds: the
    /// application sees no error. Positions of queues it lost are not committed
    /// (their new owner starts from the group's last committed offset, so messages
    /// may be delivered again: at least once, as with every rebalance).
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        // A few rounds: the group may move on again while this member rejoins (a
        // coordinator failover makes every member rejoin at once).
        const ROUNDS: usize = 3;
        let mut round = 0;
        loop {
            match self.commit_once().await {
                Err(e) if needs_rejoin(&e) && round < ROUNDS => {
                    tracing::info!(group = %self.group, error = %e, "rejoining the group to commit");
                    if matches!(e.server_error(), Some(ServerError::UnknownMember { .. })) {
                        self.member_id.clear();
                    }
                    self.rejoin().await?;
                    round += 1;
                }
                other => return other,
            }
        }
    }

    async fn commit_once(&mut self) -> Result<(), ClientError> {
        let offsets: Vec<pb::QueueOffset> = self
            .consumer
            .positions()
            .iter()
            .filter_map(|(&queue, &p)| {
                let offset = p?;
                (self.committed.get(&queue) != Some(&offset)).then(|| pb::QueueOffset {
                    topic: self.topic.clone(),
                    queue,
                    offset,
                })
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let body = request::Body::OffsetCommit(pb::OffsetCommitRequest {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
            offsets: offsets.clone(),
        });
        match self.client.request(Target::Leader, body).await? {
            response::Body::OffsetCommit(answer) => {
                for o in offsets {
                    self.committed.insert(o.queue, o.offset);
                }
                if answer.generation > self.generation {
                    // The group rebalanced: learn the new assignment now (a member
                    // waiting for a queue this one holds gets it once this one
                    // confirms), not at the next regular heartbeat.
                    self.next_heartbeat = Instant::now();
                }
                Ok(())
            }
            other => Err(unexpected("offset_commit", &other)),
        }
    }

    async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let body = request::Body::Heartbeat(pb::HeartbeatRequest {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
            generation: self.generation,
        });
        let answer = self.client.request(Target::Leader, body).await?;
        self.next_heartbeat = Instant::now() + self.heartbeat_gap();
        match answer {
            response::Body::Heartbeat(h) => {
                // The coordinator hands a queue over only once its previous owner has
                // released it, so an assignment can grow within one generation too.
                let mut offered: Vec<u32> = h
                    .assignment
                    .iter()
                    .filter(|tq| tq.topic == self.topic)
                    .map(|tq| tq.queue)
                    .collect();
                offered.sort_unstable();
                if h.generation != self.generation || offered != self.assignment() {
                    self.adopt(h.generation, h.assignment, false).await
                } else {
                    Ok(())
                }
            }
            other => Err(unexpected("heartbeat", &other)),
        }
    }

    /// Commits (with auto-commit), heartbeats when due, follows rebalances, then
    /// fetches from the assigned queues. Empty when nothing arrived in time.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedMessage>, ClientError> {
        let step = async {
            if self.config.auto_commit {
                self.commit_once().await?;
            }
            if Instant::now() >= self.next_heartbeat {
                self.heartbeat().await?;
            }
            // A long poll must not hold up the next heartbeat.
            self.consumer.config.max_wait =
                self.config.consumer.max_wait.min(self.heartbeat_gap() / 2);
            if self.consumer.positions().is_empty() {
                // Nothing assigned (more members than queues, or queues not yet
                // released by their previous owner): wait for the next heartbeat.
                let until_heartbeat = self
                    .next_heartbeat
                    .saturating_duration_since(Instant::now());
                tokio::time::sleep(self.consumer.config.max_wait.min(until_heartbeat)).await;
                return Ok(Vec::new());
            }
            self.consumer.poll().await
        };
        match step.await {
            Err(e) if needs_rejoin(&e) => {
                tracing::info!(group = %self.group, error = %e, "rejoining the group");
                if matches!(e.server_error(), Some(ServerError::UnknownMember { .. })) {
                    // The group forgot this member: join as a new one.
                    self.member_id.clear();
                }
                self.rejoin().await?;
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Commits (with auto-commit) and leaves the group so its queues are reassigned
    /// at once.
    pub async fn leave(mut self) -> Result<(), ClientError> {
        if self.config.auto_commit {
            if let Err(e) = self.commit().await {
                tracing::warn!(group = %self.group, error = %e, "final commit failed");
            }
        }
        let body = request::Body::LeaveGroup(pb::LeaveGroupRequest {
            group: self.group.clone(),
            member_id: self.member_id.clone(),
        });
        match self.client.request(Target::Leader, body).await {
            Ok(response::Body::LeaveGroup(_)) => Ok(()),
            // A new coordinator (after a leader change) never knew this member, or
            // its session expired: it is out of the group already.
            Err(ClientError::Server(ServerError::UnknownMember { .. })) => Ok(()),
            Ok(other) => Err(unexpected("leave_group", &other)),
            Err(e) => Err(e),
        }
    }
}
