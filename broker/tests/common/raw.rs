//! A raw protocol connection for tests: frames in, frames out, no retries beyond
//! what a test asks for.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raftmq_proto::batch::BatchBuilder;
use raftmq_proto::pb::{self, request::Body as Req, ErrorCode};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

pub const TEST_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Conn {
    pub framed: Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    next_id: u64,
}

impl Conn {
    pub async fn connect(broker: &raftmq_broker::Broker) -> Conn {
        Self::connect_addr(broker.local_addr)
            .await
            .expect("connect")
    }

    pub async fn connect_addr(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            framed: Framed::new(stream, raftmq_proto::frame::codec(32 << 20)),
            next_id: 1,
        })
    }

    pub async fn send(&mut self, body: Req) -> u64 {
        self.try_send(body).await.expect("send")
    }

    pub async fn try_send(&mut self, body: Req) -> std::io::Result<u64> {
        self.try_send_for(body, "").await
    }

    /// Sends `body` as a node forwarding it for user `on_behalf_of` would.
    #[allow(dead_code)]
    pub async fn try_send_for(&mut self, body: Req, on_behalf_of: &str) -> std::io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let request = pb::Request {
            correlation_id: id,
            api_version: 1,
            on_behalf_of: on_behalf_of.into(),
            body: Some(body),
        };
        self.framed
            .send(raftmq_proto::frame::encode_request(&request))
            .await?;
        Ok(id)
    }

    pub async fn recv(&mut self) -> pb::Response {
        self.try_recv(TEST_TIMEOUT).await.expect("response")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> std::io::Result<pb::Response> {
        let frame = tokio::time::timeout(wait, self.framed.next())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response"))?
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"))??;
        raftmq_proto::frame::decode_response(frame.freeze())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }

    pub async fn call(&mut self, body: Req) -> pb::Response {
        let id = self.send(body).await;
        let response = self.recv().await;
        assert_eq!(response.correlation_id, id);
        response
    }

    /// One request, with I/O errors and timeouts as values.
    pub async fn try_call(&mut self, body: Req, wait: Duration) -> std::io::Result<pb::Response> {
        let id = self.try_send(body).await?;
        let response = self.try_recv(wait).await?;
        assert_eq!(response.correlation_id, id);
        Ok(response)
    }

    /// Retries while the node is still electing a leader.
    pub async fn call_when_leader(&mut self, body: Req) -> pb::Response {
        for _ in 0..500 {
            let response = self.call(body.clone()).await;
            match &response.error {
                Some(e)
                    if e.code == ErrorCode::NotLeader as i32
                        || e.code == ErrorCode::NotReady as i32 =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return response,
            }
        }
        panic!("no leader elected");
    }
}

pub fn code(response: &pb::Response) -> ErrorCode {
    response
        .error
        .as_ref()
        .map_or(ErrorCode::None, |e| ErrorCode::try_from(e.code).unwrap())
}

pub fn batch(values: &[&str]) -> Bytes {
    let mut builder = BatchBuilder::with_capacity(1024);
    for v in values {
        builder.push(None, v.as_bytes(), &[], 1_700_000_000_000);
    }
    builder.finish()
}
