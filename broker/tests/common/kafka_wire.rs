//! Raw Kafka requests for tests: frame, encode with the `kafka-protocol` crate, decode
//! the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::Cluster;

/// A connection to node 1's Kafka port.
pub fn connect(cluster: &Cluster) -> TcpStream {
    let addr = cluster.kafka_addrs();
    let first = addr.split(',').next().expect("an address");
    let s = TcpStream::connect(first).expect("connect to the Kafka port");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

pub fn send_frame(s: &mut TcpStream, body: &[u8]) {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let _ = s.write_all(&frame);
}

/// The next answer's body, `None` when the broker closed the connection.
pub fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

pub fn request(key: ApiKey, version: i16, body: &impl Encodable) -> Vec<u8> {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 7;
    header.client_id = Some(StrBytes::from_static_str("test"));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    buf.to_vec()
}

pub fn answer<T: Decodable>(key: ApiKey, version: i16, mut body: Bytes) -> T {
    let header =
        ResponseHeader::decode(&mut body, key.response_header_version(version)).expect("header");
    assert_eq!(header.correlation_id, 7);
    T::decode(&mut body, version).expect("answer decodes")
}
