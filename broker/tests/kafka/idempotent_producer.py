"""An idempotent confluent-kafka (librdkafka) producer: N messages, value = its
number, partition = number mod P. Writes one line per acknowledged message,
"partition offset value", to the output file; exits 0 once every message is
either acknowledged or failed for good."""
import os
import sys

from confluent_kafka import Producer

bootstrap, topic, count, partitions, out_path = sys.argv[1:6]
count, partitions = int(count), int(partitions)

config = {
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 120000,
    "topic.metadata.refresh.interval.ms": 1000,
}
# librdkafka logs its idempotence events (producer id, drains, epoch bumps) to
# stderr, which a failing test prints: a duplicate stored once in a CI run of the
# rolling-restart test is not explained yet. RAFTMQ_RDKAFKA_DEBUG picks others.
config["debug"] = os.environ.get("RAFTMQ_RDKAFKA_DEBUG", "eos")
producer = Producer(config)
acked = []
failed = []


def delivered(err, msg):
    if err is None:
        acked.append(f"{msg.partition()} {msg.offset()} {msg.value().decode()}")
    else:
        failed.append(str(err))


for i in range(count):
    while True:
        try:
            producer.produce(topic, value=str(i).encode(), partition=i % partitions,
                             on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.05)
    producer.poll(0)
left = producer.flush(150)
with open(out_path, "w") as out:
    out.write("\n".join(acked) + "\n")
print(f"acked {len(acked)} failed {len(failed)} unflushed {left}"
      + (f" first failure: {failed[0]}" if failed else ""))
sys.exit(0 if left == 0 else 1)
