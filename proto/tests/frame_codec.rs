//! Frames: every message type round-trips through the codec; oversize and truncated
//! frames are refused without buffering their bodies.

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use raftmq_proto::frame::{self, DEFAULT_MAX_FRAME_BYTES};
use raftmq_proto::frame_writer::{FrameWriter, OutFrame, ZERO_COPY_MIN_BYTES};
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp};
use raftmq_proto::{ApiKey, ServerError};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

fn tq(topic: &str, queue: u32) -> pb::TopicQueue {
    pb::TopicQueue {
        topic: topic.into(),
        queue,
    }
}

fn qo(topic: &str, queue: u32, offset: u64) -> pb::QueueOffset {
    pb::QueueOffset {
        topic: topic.into(),
        queue,
        offset,
    }
}

/// One request of every API, with every field set to something other than its default.
fn every_request() -> Vec<Req> {
    vec![
        Req::CreateTopic(pb::CreateTopicRequest {
            name: "orders".into(),
            queues: 8,
            ..Default::default()
        }),
        Req::DeleteTopic(pb::DeleteTopicRequest {
            name: "orders".into(),
        }),
        Req::Metadata(pb::MetadataRequest {
            topics: vec!["a".into(), "b".into()],
            ..Default::default()
        }),
        Req::Produce(pb::ProduceRequest {
            topic: "orders".into(),
            queue: 3,
            acks: pb::Acks::Leader as i32,
            batch: Bytes::from_static(b"batch bytes"),
        }),
        Req::Fetch(pb::FetchRequest {
            topic: "orders".into(),
            queue: 3,
            offset: 42,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
            min_bytes: 1,
            group: "g".into(),
            member_id: "m-1".into(),
            generation: 7,
        }),
        Req::ListOffsets(pb::ListOffsetsRequest {
            topic: "orders".into(),
            queue: 1,
            spec: pb::OffsetSpec::Timestamp as i32,
            timestamp_ms: 1_700_000_000_000,
        }),
        Req::ClusterStatus(pb::ClusterStatusRequest {}),
        Req::TransferLeader(pb::TransferLeaderRequest { to_node_id: 2 }),
        Req::InitProducer(pb::InitProducerRequest {}),
        Req::AddNode(pb::AddNodeRequest { node_id: 4 }),
        Req::RemoveNode(pb::RemoveNodeRequest { node_id: 2 }),
        Req::JoinCluster(pb::JoinClusterRequest {
            node_id: 4,
            address: "127.0.0.1:7074".into(),
            incarnation: 77,
        }),
        Req::MoveReplicas(pb::MoveReplicasRequest {
            decommission: 3,
            max_moves: 16,
        }),
        Req::AdvertiseListeners(pb::AdvertiseListenersRequest {
            node_id: 2,
            kafka_address: "10.0.0.2:9092".into(),
            rack: "eu-west-1a".into(),
        }),
        Req::AddDataGroups(pb::AddDataGroupsRequest { count: 3 }),
        Req::ProduceMany(pb::ProduceManyRequest {
            parts: vec![
                pb::ProduceRequest {
                    topic: "orders".into(),
                    queue: 1,
                    acks: pb::Acks::Quorum as i32,
                    batch: bytes::Bytes::from_static(b"batch-one"),
                },
                pb::ProduceRequest {
                    topic: "audit".into(),
                    queue: 7,
                    acks: pb::Acks::Leader as i32,
                    batch: bytes::Bytes::from_static(b"batch-two"),
                },
            ],
        }),
        Req::FetchMany(pb::FetchManyRequest {
            parts: vec![
                pb::FetchRequest {
                    topic: "orders".into(),
                    queue: 1,
                    offset: 42,
                    max_bytes: 1 << 20,
                    ..pb::FetchRequest::default()
                },
                pb::FetchRequest {
                    topic: "audit".into(),
                    queue: 7,
                    offset: 0,
                    max_bytes: 65_536,
                    group: "billing".into(),
                    member_id: "m-1".into(),
                    generation: 3,
                    ..pb::FetchRequest::default()
                },
            ],
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 8 << 20,
        }),
        Req::JoinGroup(pb::JoinGroupRequest {
            group: "g".into(),
            member_id: "m".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
            strategy: pb::AssignmentStrategy::RoundRobin as i32,
            client_id: "c".into(),
        }),
        Req::Heartbeat(pb::HeartbeatRequest {
            group: "g".into(),
            member_id: "m".into(),
            generation: 3,
        }),
        Req::LeaveGroup(pb::LeaveGroupRequest {
            group: "g".into(),
            member_id: "m".into(),
        }),
        Req::OffsetCommit(pb::OffsetCommitRequest {
            group: "g".into(),
            member_id: "m".into(),
            generation: 3,
            offsets: vec![qo("orders", 0, 10), qo("orders", 1, 11)],
        }),
        Req::OffsetFetch(pb::OffsetFetchRequest {
            group: "g".into(),
            queues: vec![tq("orders", 0)],
        }),
        Req::ListGroups(pb::ListGroupsRequest {}),
        Req::DescribeGroup(pb::DescribeGroupRequest { group: "g".into() }),
        Req::OffsetReset(pb::OffsetResetRequest {
            group: "g".into(),
            topic: "orders".into(),
            spec: pb::OffsetSpec::Latest as i32,
            timestamp_ms: 5,
            to_offset: true,
            offset: 99,
        }),
        Req::SaslHandshake(pb::SaslHandshakeRequest {
            mechanism: "SCRAM-SHA-512".into(),
        }),
        Req::SaslAuthenticate(pb::SaslAuthenticateRequest {
            auth_bytes: Bytes::from_static(b"n,,n=alice,r=abc"),
        }),
        Req::UpsertUser(pb::UpsertUserRequest {
            name: "alice".into(),
            password: String::new(),
            iterations: 4096,
            credentials: vec![pb::StoredCredential {
                mechanism: "SCRAM-SHA-256".into(),
                salt: Bytes::from_static(b"salt"),
                iterations: 4096,
                stored_key: Bytes::from_static(&[1; 32]),
                server_key: Bytes::from_static(&[2; 32]),
            }],
        }),
        Req::DeleteUser(pb::DeleteUserRequest {
            name: "alice".into(),
        }),
        Req::ListUsers(pb::ListUsersRequest {}),
        Req::CreateAcls(pb::CreateAclsRequest {
            bindings: vec![acl()],
        }),
        Req::DeleteAcls(pb::DeleteAclsRequest {
            bindings: vec![acl()],
        }),
        Req::ListAcls(pb::ListAclsRequest {}),
        Req::Raft(pb::RaftMessage {
            from: 1,
            to: 2,
            term: 9,
            cluster_id: 77,
            from_incarnation: 5,
            from_address: "127.0.0.1:7071".into(),
            group_id: 3,
            body: Some(pb::raft_message::Body::Append(pb::AppendRequest {
                prev_log_index: 10,
                prev_log_term: 8,
                entries: vec![pb::RaftEntry {
                    index: 11,
                    term: 9,
                    kind: 1,
                    body: Bytes::from_static(b"entry"),
                }],
                commit_index: 10,
                heartbeat: false,
                read_round: 3,
                quiesce: false,
            })),
        }),
    ]
}

fn group_info(id: u32) -> pb::GroupInfo {
    pb::GroupInfo {
        group_id: id,
        leader_id: 2,
        term: 5,
        role: "follower".into(),
        commit_index: 10,
        applied_index: 9,
        last_index: 11,
        preferred_leader_id: 2,
        voters: vec![1, 2, 3],
        learners: vec![4],
        replicas: vec![2, 1, 4],
        quiesced: true,
    }
}

/// One response of every API (Raft has none), with fields set.
fn every_response() -> Vec<Resp> {
    let node = |id: u64| pb::NodeInfo {
        node_id: id,
        address: format!("127.0.0.1:70{id:02}"),
        kafka_address: format!("127.0.0.1:90{id:02}"),
        rack: format!("rack-{id}"),
    };
    vec![
        Resp::CreateTopic(pb::CreateTopicResponse {}),
        Resp::DeleteTopic(pb::DeleteTopicResponse {}),
        Resp::Metadata(pb::MetadataResponse {
            nodes: vec![node(1), node(2), node(3)],
            leader_id: 2,
            topics: vec![pb::TopicInfo {
                retention_ms: 60_000,
                retention_bytes: 1 << 20,
                name: "orders".into(),
                queues: 4,
                queue_groups: vec![1, 2, 1, 2],
            }],
            cluster_id: 77,
            groups: vec![group_info(2)],
        }),
        Resp::Produce(pb::ProduceResponse {
            base_offset: 1000,
            count: 10,
        }),
        Resp::Fetch(pb::FetchResponse {
            batches: vec![
                pb::FetchedBatch {
                    base_offset: 5,
                    batch: Bytes::from_static(b"one"),
                },
                pb::FetchedBatch {
                    base_offset: 9,
                    batch: Bytes::from_static(b"two"),
                },
            ],
            high_watermark: 12,
            log_start: 0,
        }),
        Resp::ListOffsets(pb::ListOffsetsResponse { offset: 17 }),
        Resp::ClusterStatus(pb::ClusterStatusResponse {
            node_id: 1,
            role: "leader".into(),
            term: 4,
            leader_id: 1,
            first_index: 1,
            last_index: 100,
            synced_index: 100,
            commit_index: 99,
            applied_index: 98,
            peers: vec![pb::PeerProgress {
                node_id: 2,
                match_index: 97,
                next_index: 98,
                lag: 3,
                active: true,
                voter: true,
            }],
            nodes: vec![node(1), node(2)],
            cluster_id: 42,
            members: vec![pb::MemberInfo {
                node_id: 3,
                address: "127.0.0.1:7072".into(),
                incarnation: 9,
                voter: false,
            }],
            membership_index: 7,
            membership_change_pending: true,
            incarnation: 11,
            groups: vec![group_info(1), group_info(2)],
        }),
        Resp::AddNode(pb::AddNodeResponse {
            membership_index: 8,
        }),
        Resp::RemoveNode(pb::RemoveNodeResponse {
            membership_index: 9,
        }),
        Resp::JoinCluster(pb::JoinClusterResponse {
            cluster_id: 42,
            membership_index: 10,
            voter: true,
        }),
        Resp::MoveReplicas(pb::MoveReplicasResponse {
            moved: vec![pb::GroupReplicas {
                group_id: 2,
                replicas: vec![4, 1, 2],
            }],
        }),
        Resp::AdvertiseListeners(pb::AdvertiseListenersResponse {}),
        Resp::ProduceMany(pb::ProduceManyResponse {
            results: vec![
                pb::ProducePartResult {
                    base_offset: 40,
                    count: 3,
                    error: None,
                },
                pb::ProducePartResult {
                    base_offset: 0,
                    count: 0,
                    error: Some(pb::Error::new(pb::ErrorCode::UnknownTopic, "no topic")),
                },
            ],
        }),
        Resp::FetchMany(pb::FetchManyResponse {
            results: vec![
                pb::FetchPartResult {
                    fetch: Some(pb::FetchResponse {
                        batches: vec![pb::FetchedBatch {
                            base_offset: 40,
                            batch: bytes::Bytes::from_static(b"stored"),
                        }],
                        high_watermark: 43,
                        log_start: 0,
                    }),
                    error: None,
                },
                pb::FetchPartResult {
                    fetch: None,
                    error: Some(pb::Error::new(pb::ErrorCode::NotLeader, "moved")),
                },
            ],
        }),
        Resp::AddDataGroups(pb::AddDataGroupsResponse {
            added: vec![pb::GroupReplicas {
                group_id: 4,
                replicas: vec![2, 3, 1],
            }],
        }),
        Resp::TransferLeader(pb::TransferLeaderResponse {}),
        Resp::InitProducer(pb::InitProducerResponse {
            producer_id: 12,
            producer_epoch: 1,
        }),
        Resp::JoinGroup(pb::JoinGroupResponse {
            member_id: "m".into(),
            generation: 2,
            assignment: vec![tq("orders", 0), tq("orders", 2)],
            heartbeat_interval_ms: 3000,
        }),
        Resp::Heartbeat(pb::HeartbeatResponse {
            generation: 3,
            assignment: vec![tq("orders", 1)],
        }),
        Resp::LeaveGroup(pb::LeaveGroupResponse {}),
        Resp::OffsetCommit(pb::OffsetCommitResponse { generation: 7 }),
        Resp::OffsetFetch(pb::OffsetFetchResponse {
            offsets: vec![qo("orders", 0, 3)],
        }),
        Resp::ListGroups(pb::ListGroupsResponse {
            groups: vec!["g".into(), "h".into()],
        }),
        Resp::DescribeGroup(pb::DescribeGroupResponse {
            group: "g".into(),
            generation: 2,
            members: vec![pb::GroupMember {
                member_id: "m".into(),
                client_id: "c".into(),
                assignment: vec![tq("orders", 0)],
            }],
            queues: vec![pb::GroupQueueLag {
                topic: "orders".into(),
                queue: 0,
                has_committed: true,
                committed: 3,
                log_end: 10,
                lag: 7,
                log_end_unknown: true,
            }],
        }),
        Resp::OffsetReset(pb::OffsetResetResponse {
            offsets: vec![qo("orders", 0, 0)],
        }),
        Resp::SaslHandshake(pb::SaslHandshakeResponse {
            mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()],
        }),
        Resp::SaslAuthenticate(pb::SaslAuthenticateResponse {
            auth_bytes: Bytes::from_static(b"v=abc"),
            complete: true,
            principal: "User:alice".into(),
        }),
        Resp::UpsertUser(pb::UpsertUserResponse { created: true }),
        Resp::DeleteUser(pb::DeleteUserResponse {}),
        Resp::CreateAcls(pb::CreateAclsResponse {}),
        Resp::DeleteAcls(pb::DeleteAclsResponse { deleted: 1 }),
        Resp::ListAcls(pb::ListAclsResponse {
            bindings: vec![acl()],
        }),
        Resp::ListUsers(pb::ListUsersResponse {
            users: vec![pb::UserDescription {
                name: "alice".into(),
                mechanisms: vec!["SCRAM-SHA-512".into()],
            }],
        }),
    ]
}

fn acl() -> pb::AclBinding {
    pb::AclBinding {
        principal: "User:alice".into(),
        resource_type: pb::AclResourceType::Topic as i32,
        resource_name: "orders-".into(),
        pattern_type: pb::AclPatternType::Prefixed as i32,
        operation: pb::AclOperation::Produce as i32,
        deny: false,
    }
}

#[test]
fn every_request_type_round_trips_through_the_codec() {
    let requests = every_request();
    assert_eq!(requests.len(), ApiKey::ALL.len(), "one request per API key");
    let mut codec = frame::codec(DEFAULT_MAX_FRAME_BYTES);
    let mut wire = BytesMut::new();
    let sent: Vec<pb::Request> = requests
        .into_iter()
        .enumerate()
        .map(|(i, body)| pb::Request::new(i as u64 + 1, body))
        .collect();
    for request in &sent {
        codec
            .encode(frame::encode_request(request), &mut wire)
            .expect("encode");
    }
    for (request, key) in sent.iter().zip(ApiKey::ALL) {
        let body = codec.decode(&mut wire).expect("decode").expect("a frame");
        let decoded = frame::decode_request(body.freeze()).expect("valid request");
        assert_eq!(&decoded, request);
        assert_eq!(decoded.api_key(), Some(key));
    }
    assert!(wire.is_empty());
    assert!(codec.decode(&mut wire).expect("no error").is_none());
}

#[test]
fn every_response_type_round_trips_through_the_codec() {
    let mut codec = frame::codec(DEFAULT_MAX_FRAME_BYTES);
    let mut wire = BytesMut::new();
    let mut sent: Vec<pb::Response> = every_response()
        .into_iter()
        .enumerate()
        .map(|(i, body)| pb::Response::ok(i as u64 + 1, body))
        .collect();
    assert_eq!(
        sent.len(),
        ApiKey::ALL.len() - 1,
        "every API but Raft answers"
    );
    sent.push(pb::Response::error(
        99,
        pb::Error::offset_out_of_range(3, 10),
    ));
    for response in &sent {
        codec
            .encode(frame::encode_response(response), &mut wire)
            .expect("encode");
    }
    for response in &sent {
        let body = codec.decode(&mut wire).expect("decode").expect("a frame");
        let decoded = frame::decode_response(body.freeze()).expect("valid response");
        assert_eq!(&decoded, response);
    }
    let last = sent.last().expect("error response").clone();
    assert_eq!(
        ServerError::from(last.error.expect("an error")),
        ServerError::OffsetOutOfRange {
            log_start: 3,
            log_end: 10,
            message: "offset out of range [3, 10]".into(),
        }
    );
}

#[test]
fn decoded_batches_share_the_frame_buffer() {
    let request = pb::Request::new(
        1,
        Req::Produce(pb::ProduceRequest {
            topic: "t".into(),
            queue: 0,
            acks: 0,
            batch: Bytes::from(vec![7u8; 4096]),
        }),
    );
    let body = frame::encode_request(&request);
    let range = body.as_ptr_range();
    let decoded = frame::decode_request(body.clone()).expect("decode");
    let Some(Req::Produce(p)) = decoded.body else {
        panic!("a produce request")
    };
    assert!(range.contains(&p.batch.as_ptr()), "batch was copied");
}

#[test]
fn unknown_api_decodes_with_no_body_and_keeps_its_correlation_id() {
    // Field 1 = correlation id 5, then field 99 (no such API) as an empty message.
    let body = Bytes::from_static(&[0x08, 0x05, 0x9a, 0x06, 0x00]);
    let decoded = frame::decode_request(body).expect("decode");
    assert_eq!(decoded.correlation_id, 5);
    assert_eq!(decoded.api_key(), None);
}

#[test]
fn garbage_bodies_are_errors_not_panics() {
    for body in [
        &[0xffu8; 12][..],
        &[0x0a, 0x80][..],
        &[0x12, 0x05, 0x01][..],
    ] {
        assert!(frame::decode_request(Bytes::copy_from_slice(body)).is_err());
        assert!(frame::decode_response(Bytes::copy_from_slice(body)).is_err());
    }
}

#[tokio::test]
async fn frame_with_a_declared_length_over_the_limit_is_refused_before_its_body() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut frames = FramedRead::new(server, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    // Declares 2 GiB and sends only the 4-byte length: the reader must fail at once
    // rather than wait for (or allocate) the body.
    client
        .write_all(&(2u32 << 30).to_be_bytes())
        .await
        .expect("write");
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), frames.next())
        .await
        .expect("refused without waiting for the body")
        .expect("an item");
    let err = result.expect_err("oversize frame refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        frames.read_buffer().capacity() < 1 << 20,
        "body was buffered"
    );
}

#[test]
fn frame_one_byte_over_a_small_limit_is_refused_and_at_the_limit_accepted() {
    let mut codec = frame::codec(16);
    let mut wire = BytesMut::new();
    wire.put_u32(16);
    wire.put_bytes(1, 16);
    assert_eq!(
        codec.decode(&mut wire).expect("ok").map(|b| b.len()),
        Some(16)
    );
    let mut wire = BytesMut::new();
    wire.put_u32(17);
    assert!(codec.decode(&mut wire).is_err());
    // The encoder refuses too.
    assert!(codec
        .encode(Bytes::from(vec![0u8; 17]), &mut BytesMut::new())
        .is_err());
}

#[test]
fn truncated_frames_wait_for_more_bytes_and_decode_once_complete() {
    let request = pb::Request::new(
        3,
        Req::CreateTopic(pb::CreateTopicRequest {
            name: "t".into(),
            queues: 2,
            ..Default::default()
        }),
    );
    let mut full = BytesMut::new();
    frame::codec(DEFAULT_MAX_FRAME_BYTES)
        .encode(frame::encode_request(&request), &mut full)
        .expect("encode");
    for cut in 0..full.len() {
        let mut codec = frame::codec(DEFAULT_MAX_FRAME_BYTES);
        let mut wire = BytesMut::from(&full[..cut]);
        assert!(
            codec.decode(&mut wire).expect("no error").is_none(),
            "cut {cut}"
        );
        wire.extend_from_slice(&full[cut..]);
        let body = codec.decode(&mut wire).expect("ok").expect("complete");
        assert_eq!(
            frame::decode_request(body.freeze()).expect("valid"),
            request
        );
    }
}

#[tokio::test]
async fn stream_ending_inside_a_frame_is_an_error() {
    let (mut client, server) = tokio::io::duplex(64);
    let mut frames = FramedRead::new(server, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    client
        .write_all(&[0, 0, 0, 10, 1, 2, 3])
        .await
        .expect("write");
    drop(client);
    let item = frames.next().await.expect("an item");
    assert!(item.is_err(), "a truncated last frame is reported");
}

#[tokio::test]
async fn framed_sink_and_stream_carry_pipelined_requests() {
    let (client, server) = tokio::io::duplex(1 << 16);
    let mut sink = FramedWrite::new(client, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    let mut stream = FramedRead::new(server, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    let requests: Vec<_> = every_request()
        .into_iter()
        .enumerate()
        .map(|(i, b)| pb::Request::new(i as u64, b))
        .collect();
    let sent = requests.clone();
    let writer = tokio::spawn(async move {
        for r in &sent {
            sink.feed(frame::encode_request(r)).await.expect("feed");
        }
        SinkExt::<Bytes>::flush(&mut sink).await.expect("flush");
    });
    for r in &requests {
        let body = stream.next().await.expect("frame").expect("ok");
        assert_eq!(&frame::decode_request(body.freeze()).expect("decode"), r);
    }
    writer.await.expect("writer");
}

/// Requests and responses whose batches are large enough to be referenced, not
/// copied, next to every other message type.
fn messages_with_large_batches() -> (Vec<pb::Request>, Vec<Bytes>) {
    let batches: Vec<Bytes> = (0..4u8)
        .map(|i| Bytes::from(vec![i; 1000 + usize::from(i) * 5000]))
        .collect();
    let produce = |batch: &Bytes| pb::ProduceRequest {
        topic: "orders".into(),
        queue: 1,
        acks: pb::Acks::Quorum as i32,
        batch: batch.clone(),
    };
    let mut bodies = every_request();
    bodies.push(Req::Produce(produce(&batches[3])));
    bodies.push(Req::ProduceMany(pb::ProduceManyRequest {
        parts: batches.iter().map(produce).collect(),
    }));
    let requests = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| pb::Request::new(i as u64 + 1, b))
        .collect();
    (requests, batches)
}

#[test]
fn an_out_frame_is_the_codec_frame_and_references_its_large_batches() {
    let (requests, batches) = messages_with_large_batches();
    let mut codec = frame::codec(DEFAULT_MAX_FRAME_BYTES);
    for request in &requests {
        let out = OutFrame::encode(request);
        let mut wire = BytesMut::new();
        codec
            .encode(frame::encode_request(request), &mut wire)
            .expect("encode");
        assert_eq!(out.to_bytes(), wire.freeze(), "{request:?}");
        assert_eq!(out.body_len() + 4, out.to_bytes().len());
    }
    // The ProduceMany's four batches: three are at least ZERO_COPY_MIN_BYTES and
    // appear as parts that are the batches themselves (same memory); the small
    // fields between them are copied.
    let many = OutFrame::encode(requests.last().expect("a request"));
    for batch in &batches {
        let referenced = many
            .parts()
            .iter()
            .any(|p| p.as_ptr() == batch.as_ptr() && p.len() == batch.len());
        assert_eq!(
            referenced,
            batch.len() >= ZERO_COPY_MIN_BYTES,
            "batch of {} bytes",
            batch.len()
        );
    }
    // Copied: one part of its own bytes, the same frame.
    let copied = OutFrame::encode_copied(requests.last().expect("a request"));
    assert_eq!(copied.parts().len(), 1);
    assert_eq!(copied.to_bytes(), many.to_bytes());
    // A response carrying fetched batches (slices of the mapped log on a broker).
    let response = pb::Response::ok(
        9,
        Resp::Fetch(pb::FetchResponse {
            batches: batches
                .iter()
                .enumerate()
                .map(|(i, b)| pb::FetchedBatch {
                    base_offset: i as u64 * 100,
                    batch: b.clone(),
                })
                .collect(),
            high_watermark: 400,
            ..Default::default()
        }),
    );
    let out = OutFrame::encode(&response);
    let mut wire = BytesMut::new();
    codec
        .encode(frame::encode_response(&response), &mut wire)
        .expect("encode");
    assert_eq!(out.to_bytes(), wire.freeze());
    assert_eq!(
        out.parts()
            .iter()
            .filter(|p| batches.iter().any(|b| b.as_ptr() == p.as_ptr()))
            .count(),
        3
    );
}

#[tokio::test]
async fn a_frame_writer_delivers_every_frame_in_order_through_short_writes() {
    let (requests, _) = messages_with_large_batches();
    // A 100-byte pipe: every vectored write is cut short, often inside a part.
    let (client, server) = tokio::io::duplex(100);
    let mut writer = FrameWriter::new(client, DEFAULT_MAX_FRAME_BYTES);
    let mut stream = FramedRead::new(server, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    let sent = requests.clone();
    let task = tokio::spawn(async move {
        for (i, r) in sent.iter().enumerate() {
            writer.feed(OutFrame::encode(r)).await.expect("feed");
            if i % 7 == 0 {
                writer.flush().await.expect("flush");
            }
        }
        writer.flush().await.expect("flush");
    });
    for r in &requests {
        let body = stream.next().await.expect("frame").expect("ok");
        assert_eq!(&frame::decode_request(body.freeze()).expect("decode"), r);
    }
    task.await.expect("writer");
}

#[tokio::test]
async fn a_frame_writer_refuses_a_frame_over_its_limit_and_writes_none_of_it() {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let mut writer = FrameWriter::new(client, 1000);
    let big = pb::Request::new(
        1,
        Req::Produce(pb::ProduceRequest {
            topic: "t".into(),
            batch: Bytes::from(vec![7u8; 4000]),
            ..Default::default()
        }),
    );
    let err = writer
        .feed(OutFrame::encode(&big))
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("frame limit of 1000"), "{err}");
    let small = pb::Request::new(2, Req::Metadata(pb::MetadataRequest::default()));
    writer.feed(OutFrame::encode(&small)).await.expect("feed");
    writer.flush().await.expect("flush");
    drop(writer);
    let mut wire = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut server, &mut wire)
        .await
        .expect("read");
    assert_eq!(wire, OutFrame::encode(&small).to_bytes());
}

proptest::proptest! {
    #[test]
    fn arbitrary_frame_bodies_never_panic_the_decoders(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
    ) {
        let body = Bytes::from(body);
        let _ = frame::decode_request(body.clone());
        let _ = frame::decode_response(body);
    }

    #[test]
    fn arbitrary_byte_streams_never_panic_the_frame_codec(
        wire in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
    ) {
        let mut codec = frame::codec(256);
        let mut buf = BytesMut::from(&wire[..]);
        // Bounded: each step consumes a frame, waits, or fails.
        for _ in 0..wire.len() + 1 {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => proptest::prop_assert!(frame.len() <= 256),
                Ok(None) | Err(_) => break,
            }
        }
    }
}
