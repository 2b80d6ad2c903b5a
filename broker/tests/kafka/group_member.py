"""One member of a confluent-kafka (librdkafka) consumer group: writes
"partition offset value" per message consumed to the output file, commits
synchronously every 100 messages and when partitions are revoked, and exits
(committing and leaving the group) once it has seen nothing for IDLE seconds
after the STOP file appears, or at the DEADLINE."""
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException

bootstrap, topic, group, out_path, stop_path = sys.argv[1:6]
IDLE, DEADLINE = 3.0, time.time() + 150

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "partition.assignment.strategy": "range",
})
uncommitted = 0


def commit():
    global uncommitted
    if uncommitted:
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as e:
            # A rebalance took the partitions away: the next owner re-reads.
            print(f"commit refused: {e}", file=sys.stderr)
        uncommitted = 0


def on_revoke(_consumer, _partitions):
    commit()


consumer.subscribe([topic], on_revoke=on_revoke)
last = time.time()
with open(out_path, "a") as out:
    while time.time() < DEADLINE:
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            if os.path.exists(stop_path) and time.time() - last > IDLE:
                break
            continue
        last = time.time()
        out.write(f"{msg.partition()} {msg.offset()} {msg.value().decode()}\n")
        out.flush()
        uncommitted += 1
        if uncommitted >= 100:
            commit()
commit()
consumer.close()
