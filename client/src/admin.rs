//! [`Admin`]: topics and cluster operations.

use raftmq_proto::frame::validate_name;
use raftmq_proto::pb::{self, request, response};

use crate::client::unexpected;
use crate::consumer::list_offset;
use crate::{Client, ClientError, Target};
use futures::StreamExt;

/// Queues whose log ends `describe_group` asks other brokers for at once.
const GROUP_LAG_QUERIES_AT_ONCE: usize = 32;

/// A topic's own retention (0: none), on top of the broker-wide retention, which
/// always applies: a topic keeps nothing longer than the broker does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicRetention {
    /// Delete messages older than this (by their batch's largest timestamp).
    pub ms: u64,
    /// Delete the oldest batches of a queue while it holds more than this.
    pub bytes: u64,
}
/// A topic and its queues' offset ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// The name.
    pub name: String,
    /// Per queue, in order: `(first offset stored, log end)`.
    pub queues: Vec<(u64, u64)>,
    /// The topic's own retention (zeros: none; the broker's applies too).
    pub retention: TopicRetention,
    /// Per queue, in order: where it lives.
    pub placement: Vec<QueuePlacement>,
}

/// Where a queue lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePlacement {
    /// The Raft group holding it (0: the metadata group).
    pub group: u32,
    /// That group's leader as the answering broker knows it (0: unknown).
    pub leader: u64,
    /// The group's placed replicas, preferred leader first (empty for group 0,
    /// which every node holds).
    pub replicas: Vec<u64>,
}

/// One node's answer to a status request.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The node's id (from metadata).
    pub node_id: u64,
    /// Its client address.
    pub address: String,
    /// The rack (failure domain) it named, if any.
    pub rack: Option<String>,
    /// Its status, or why it could not be had.
    pub status: Result<pb::ClusterStatusResponse, ClientError>,
}

/// Administrative operations. Cheap to create from a [`Client`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// Admin operations over `client`.
    pub fn new(client: &Client) -> Self {
        Admin {
            client: client.clone(),
        }
    }

    /// Creates `name` with `queues` queues (committed through Raft when this returns).
    pub async fn create_topic(&self, name: &str, queues: u32) -> Result<(), ClientError> {
        self.create_topic_with(name, queues, TopicRetention::default())
            .await
    }

    /// Creates `name` with `queues` queues and a retention of its own.
    pub async fn create_topic_with(
        &self,
        name: &str,
        queues: u32,
        retention: TopicRetention,
    ) -> Result<(), ClientError> {
        validate_name(name)?;
        if queues == 0 {
            return Err(ClientError::InvalidArgument(
                "a topic needs at least one queue".into(),
            ));
        }
        let body = request::Body::CreateTopic(pb::CreateTopicRequest {
            name: name.to_owned(),
            queues,
            retention_ms: retention.ms,
            retention_bytes: retention.bytes,
        });
        match self.client.request(Target::Leader, body).await? {
            response::Body::CreateTopic(_) => {
                // Best effort: let sends see the topic without another round trip.
                let _ = self.client.refresh_metadata().await;
                Ok(())
            }
            other => Err(unexpected("create_topic", &other)),
        }
    }

    /// Deletes `name`.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let body = request::Body::DeleteTopic(pb::DeleteTopicRequest {
            name: name.to_owned(),
        });
        match self.client.request(Target::Leader, body).await? {
            response::Body::DeleteTopic(_) => {
                let _ = self.client.refresh_metadata().await;
                Ok(())
            }
            other => Err(unexpected("delete_topic", &other)),
        }
    }

    /// Every topic with its queue count, by name.
    pub async fn list_topics(&self) -> Result<Vec<pb::TopicInfo>, ClientError> {
        let body = request::Body::Metadata(pb::MetadataRequest::default());
        match self.client.request(Target::Leader, body).await? {
            response::Body::Metadata(m) => {
                let mut topics = m.topics;
                topics.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(topics)
            }
            other => Err(unexpected("metadata", &other)),
        }
    }

    /// The answering broker knows the leaders only of the data groups that run a
    /// replica on it: asks a replica of each other group (a short wait each, so a
    /// replica that is down costs a describe at most a few seconds).
    async fn fill_group_leaders(&self, topic: &str, placement: &mut [QueuePlacement]) {
        const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
        let unknown: std::collections::BTreeSet<u32> = placement
            .iter()
            .filter(|p| p.group != 0 && p.leader == 0)
            .map(|p| p.group)
            .collect();
        for group in unknown {
            let replicas = placement
                .iter()
                .find(|p| p.group == group)
                .map(|p| p.replicas.clone())
                .unwrap_or_default();
            for node in replicas {
                let body = request::Body::Metadata(pb::MetadataRequest {
                    topics: vec![topic.to_owned()],
                    ..Default::default()
                });
                let answer = tokio::time::timeout(
                    REPLICA_WAIT,
                    self.client.request(Target::Node(node), body),
                )
                .await;
                let Ok(Ok(response::Body::Metadata(m))) = answer else {
                    continue;
                };
                let leader = m
                    .groups
                    .iter()
                    .find(|i| i.group_id == group && i.leader_id != 0)
                    .map(|i| i.leader_id);
                if let Some(leader) = leader {
                    for p in placement.iter_mut().filter(|p| p.group == group) {
                        p.leader = leader;
                    }
                    break;
                }
            }
        }
    }

    /// A topic's queues with their offset ranges, groups, leaders and replicas.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let body = request::Body::Metadata(pb::MetadataRequest {
            topics: vec![name.to_owned()],
            ..Default::default()
        });
        let (queues, retention, mut placement) =
            match self.client.request(Target::Leader, body).await? {
                response::Body::Metadata(m) => m
                    .topics
                    .iter()
                    .find(|t| t.name == name)
                    .map(|t| {
                        let retention = TopicRetention {
                            ms: t.retention_ms,
                            bytes: t.retention_bytes,
                        };
                        let placement: Vec<QueuePlacement> = (0..t.queues)
                            .map(|q| {
                                let group = t.queue_groups.get(q as usize).copied().unwrap_or(0);
                                let info = m.groups.iter().find(|i| i.group_id == group);
                                QueuePlacement {
                                    group,
                                    leader: match group {
                                        0 => m.leader_id,
                                        _ => info.map_or(0, |i| i.leader_id),
                                    },
                                    replicas: info.map(|i| i.replicas.clone()).unwrap_or_default(),
                                }
                            })
                            .collect();
                        (t.queues, retention, placement)
                    })
                    .ok_or_else(|| {
                        ClientError::Server(raftmq_proto::ServerError::UnknownTopic {
                            message: format!("unknown topic {name:?}"),
                        })
                    })?,
                other => return Err(unexpected("metadata", &other)),
            };
        self.fill_group_leaders(name, &mut placement).await;
        let mut ranges = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let start = list_offset(&self.client, name, q, pb::OffsetSpec::Earliest, 0).await?;
            let end = list_offset(&self.client, name, q, pb::OffsetSpec::Latest, 0).await?;
            ranges.push((start, end));
        }
        Ok(TopicDescription {
            name: name.to_owned(),
            queues: ranges,
            retention,
            placement,
        })
    }

    /// Asks every node in the metadata for its Raft status (concurrently, no retry).
    pub async fn cluster_status(&self) -> Result<Vec<NodeStatus>, ClientError> {
        let metadata = self.client.refresh_metadata().await?;
        let racks = metadata.racks;
        let asks = metadata.nodes.into_iter().map(|(node_id, address)| {
            let client = self.client.clone();
            let rack = racks.get(&node_id).cloned();
            async move {
                let body = request::Body::ClusterStatus(pb::ClusterStatusRequest {});
                let status = match client.call_address(&address, body).await {
                    Ok(response::Body::ClusterStatus(s)) => Ok(s),
                    Ok(other) => Err(unexpected("cluster_status", &other)),
                    Err(e) => Err(e),
                };
                NodeStatus {
                    node_id,
                    address,
                    rack,
                    status,
                }
            }
        });
        Ok(futures::future::join_all(asks).await)
    }

    /// Every consumer group, by name.
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        let body = request::Body::ListGroups(pb::ListGroupsRequest {});
        match self.client.request(Target::Leader, body).await? {
            response::Body::ListGroups(l) => {
                let mut groups = l.groups;
                groups.sort();
                Ok(groups)
            }
            other => Err(unexpected("list_groups", &other)),
        }
    }

    /// A group's members, assignment, committed offsets and lag.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<pb::DescribeGroupResponse, ClientError> {
        let body = request::Body::DescribeGroup(pb::DescribeGroupRequest {
            group: group.to_owned(),
        });
        let mut described = match self.client.request(Target::Leader, body).await? {
            response::Body::DescribeGroup(d) => d,
            other => return Err(unexpected("describe_group", &other)),
        };
        // The answering broker (the metadata leader) knows the ends only of the
        // queues whose data group runs a replica on it: ask the others' leaders,
        // several queues at a time (a topic may have thousands).
        let client = &self.client;
        let unknown = described.queues.iter_mut().filter(|q| q.log_end_unknown);
        futures::stream::iter(unknown)
            .for_each_concurrent(GROUP_LAG_QUERIES_AT_ONCE, |q| async move {
                let (start, end) = futures::join!(
                    list_offset(client, &q.topic, q.queue, pb::OffsetSpec::Earliest, 0),
                    list_offset(client, &q.topic, q.queue, pb::OffsetSpec::Latest, 0),
                );
                let (Ok(start), Ok(end)) = (start, end) else {
                    return; // left unknown: the caller shows it so
                };
                // Messages retention deleted are not lag: they cannot be consumed.
                let from = if q.has_committed {
                    q.committed.max(start)
                } else {
                    start
                };
                q.committed = from;
                q.log_end = end;
                q.lag = end.saturating_sub(from);
                q.log_end_unknown = false;
            })
            .await;
        Ok(described)
    }

    /// Moves a group's committed offsets for `topic` (every queue) to `to`: earliest,
    /// latest, a timestamp, or an exact offset. Returns the new offsets.
    pub async fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        to: crate::SeekTo,
    ) -> Result<Vec<pb::QueueOffset>, ClientError> {
        let mut r = pb::OffsetResetRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            ..Default::default()
        };
        match to {
            crate::SeekTo::Earliest => r.spec = pb::OffsetSpec::Earliest as i32,
            crate::SeekTo::Latest => r.spec = pb::OffsetSpec::Latest as i32,
            crate::SeekTo::Timestamp(ms) => {
                r.spec = pb::OffsetSpec::Timestamp as i32;
                r.timestamp_ms = ms;
            }
            crate::SeekTo::Offset(o) => {
                r.to_offset = true;
                r.offset = o;
            }
        }
        match self
            .client
            .request(Target::Leader, request::Body::OffsetReset(r))
            .await?
        {
            response::Body::OffsetReset(o) => Ok(o.offsets),
            other => Err(unexpected("offset_reset", &other)),
        }
    }

    /// Promotes learner `node` (a node started with `--join`) to voter, once it has
    /// caught up with the leader. Returns the index of the membership entry.
    pub async fn add_node(&self, node: u64) -> Result<u64, ClientError> {
        let body = request::Body::AddNode(pb::AddNodeRequest { node_id: node });
        match self.client.request(Target::Leader, body).await? {
            response::Body::AddNode(r) => {
                let _ = self.client.refresh_metadata().await;
                Ok(r.membership_index)
            }
            other => Err(unexpected("add_node", &other)),
        }
    }

    /// Adds `count` data groups after the cluster's last one, on the least-loaded
    /// nodes. Topics created from then on spread over every group (existing
    /// topics keep their queues where they are). Returns the new groups with
    /// their replicas (preferred leader first).
    pub async fn add_data_groups(&self, count: u32) -> Result<Vec<pb::GroupReplicas>, ClientError> {
        let body = request::Body::AddDataGroups(pb::AddDataGroupsRequest { count });
        match self.client.request(Target::Leader, body).await? {
            response::Body::AddDataGroups(r) => Ok(r.added),
            other => Err(unexpected("add_data_groups", &other)),
        }
    }

    /// Moves data-group replicas: off `decommission` when given (no replica is
    /// placed on it from then on), then up to `max_moves` from the most to the least
    /// loaded nodes. Returns the groups whose replicas change, with their new
    /// replicas (preferred leader first); each group's leader then moves its
    /// membership (`cluster_status` shows the progress).
    pub async fn move_replicas(
        &self,
        decommission: Option<u64>,
        max_moves: u32,
    ) -> Result<Vec<pb::GroupReplicas>, ClientError> {
        let body = request::Body::MoveReplicas(pb::MoveReplicasRequest {
            decommission: decommission.unwrap_or(0),
            max_moves,
        });
        match self.client.request(Target::Leader, body).await? {
            response::Body::MoveReplicas(r) => Ok(r.moved),
            other => Err(unexpected("move_replicas", &other)),
        }
    }

    /// Removes voter or learner `node`, live or dead (a leader removed hands its
    /// leadership over first). Returns the index of the membership entry.
    pub async fn remove_node(&self, node: u64) -> Result<u64, ClientError> {
        let body = request::Body::RemoveNode(pb::RemoveNodeRequest { node_id: node });
        match self.client.request(Target::Leader, body).await? {
            response::Body::RemoveNode(r) => {
                let _ = self.client.refresh_metadata().await;
                Ok(r.membership_index)
            }
            other => Err(unexpected("remove_node", &other)),
        }
    }

    /// The data groups whose leader (as it answers `cluster status`) lists `node`
    /// as a voter or learner: while a decommissioned node is in this list, its
    /// replicas are still moving off it. Groups whose leader cannot be reached
    /// are not in it.
    pub async fn groups_listing(&self, node: u64) -> Result<Vec<u32>, ClientError> {
        let mut groups = std::collections::BTreeSet::new();
        for n in self.cluster_status().await? {
            let Ok(status) = n.status else { continue };
            for g in &status.groups {
                let leads = g.role == "leader";
                if leads && (g.voters.contains(&node) || g.learners.contains(&node)) {
                    groups.insert(g.group_id);
                }
            }
        }
        Ok(groups.into_iter().collect())
    }

    /// Asks the leader to hand leadership to node `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ClientError> {
        let body = request::Body::TransferLeader(pb::TransferLeaderRequest { to_node_id: to });
        match self.client.request(Target::Leader, body).await? {
            response::Body::TransferLeader(_) => {
                let _ = self.client.refresh_metadata().await;
                Ok(())
            }
            other => Err(unexpected("transfer_leader", &other)),
        }
    }

    /// Creates user `name` or changes its password. The SCRAM credentials of both
    /// mechanisms are derived here: the password itself never leaves this process.
    /// Returns whether the user is new.
    pub async fn upsert_user(&self, name: &str, password: &str) -> Result<bool, ClientError> {
        use raftmq_proto::scram::{Mechanism, ScramCredential, MIN_ITERATIONS};
        if password.is_empty() {
            return Err(ClientError::InvalidArgument("an empty password".into()));
        }
        let mut credentials = Vec::new();
        for mechanism in Mechanism::ALL {
            let c = ScramCredential::generate(mechanism, password, MIN_ITERATIONS)
                .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
            credentials.push(pb::StoredCredential {
                mechanism: mechanism.name().into(),
                salt: c.salt.into(),
                iterations: c.iterations,
                stored_key: c.stored_key.into(),
                server_key: c.server_key.into(),
            });
        }
        let body = request::Body::UpsertUser(pb::UpsertUserRequest {
            name: name.into(),
            credentials,
            ..Default::default()
        });
        match self.client.request(Target::Leader, body).await? {
            response::Body::UpsertUser(r) => Ok(r.created),
            other => Err(unexpected("upsert_user", &other)),
        }
    }

    /// Deletes user `name`: every node refuses its logins, and its connections,
    /// from then on.
    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let body = request::Body::DeleteUser(pb::DeleteUserRequest { name: name.into() });
        match self.client.request(Target::Leader, body).await? {
            response::Body::DeleteUser(_) => Ok(()),
            other => Err(unexpected("delete_user", &other)),
        }
    }

    /// Every user, with the mechanisms it can log in with.
    pub async fn list_users(&self) -> Result<Vec<pb::UserDescription>, ClientError> {
        let body = request::Body::ListUsers(pb::ListUsersRequest {});
        match self.client.request(Target::Leader, body).await? {
            response::Body::ListUsers(r) => Ok(r.users),
            other => Err(unexpected("list_users", &other)),
        }
    }

    /// Adds ACLs (enforced when the brokers require logins).
    pub async fn create_acls(&self, bindings: Vec<pb::AclBinding>) -> Result<(), ClientError> {
        let body = request::Body::CreateAcls(pb::CreateAclsRequest { bindings });
        match self.client.request(Target::Leader, body).await? {
            response::Body::CreateAcls(_) => Ok(()),
            other => Err(unexpected("create_acls", &other)),
        }
    }

    /// Removes these exact ACLs; returns how many existed.
    pub async fn delete_acls(&self, bindings: Vec<pb::AclBinding>) -> Result<u32, ClientError> {
        let body = request::Body::DeleteAcls(pb::DeleteAclsRequest { bindings });
        match self.client.request(Target::Leader, body).await? {
            response::Body::DeleteAcls(r) => Ok(r.deleted),
            other => Err(unexpected("delete_acls", &other)),
        }
    }

    /// Every ACL.
    pub async fn list_acls(&self) -> Result<Vec<pb::AclBinding>, ClientError> {
        let body = request::Body::ListAcls(pb::ListAclsRequest {});
        match self.client.request(Target::Leader, body).await? {
            response::Body::ListAcls(r) => Ok(r.bindings),
            other => Err(unexpected("list_acls", &other)),
        }
    }
}
