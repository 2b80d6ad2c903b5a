//! The README's client example: create a topic, produce one message, read it back.
//!
//! Run against a broker started with `cargo run --release -p raftmq-broker`:
//! `cargo run -p raftmq-client --example quickstart`. The test suite builds it, so
//! the README's example always compiles.

use raftmq_client::{Admin, Client, ClientError, Consumer, Message, Producer, SeekTo};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let client = Client::connect(&["127.0.0.1:7070"]).await?;
    if let Err(e) = Admin::new(&client).create_topic("orders", 4).await {
        eprintln!("create topic: {e} (it may exist already)");
    }

    let producer = Producer::builder(&client).build().await?;
    let ack = producer
        .send(Message::new("orders", "hello").with_key("user-1"))
        .await?;
    let stored = ack.await?; // its queue and offset, once a quorum has synced it
    producer.close().await;

    let mut consumer = Consumer::new(&client);
    consumer.assign("orders", &[stored.queue]).await?;
    consumer
        .seek(stored.queue, SeekTo::Offset(stored.offset))
        .await?;
    for message in consumer.poll().await? {
        println!(
            "{}/{} @{}: {}",
            message.topic,
            message.queue,
            message.offset,
            String::from_utf8_lossy(&message.value)
        );
    }
    Ok(())
}
