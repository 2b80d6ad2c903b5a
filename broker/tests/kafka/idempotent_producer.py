"""An idempotent confluent-kafka (librdkafka) producer: N messages, value = its
number, partition = number mod P. Writes one line per acknowledged message,
"partition offset value", to the output file; exits 0 once every message is
either acknowledged or failed for good."""
import os
import sys
import time

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
# librdkafka logs its idempotence events (producer id, drains, epoch bumps) and
# its metadata refreshes (which broker leads each partition) to stderr, which a
# failing test prints: a producer that stalled once in a loaded run of the
# rolling-restart test is not explained yet. RAFTMQ_RDKAFKA_DEBUG picks others.
config["debug"] = os.environ.get("RAFTMQ_RDKAFKA_DEBUG", "eos,metadata")
producer = Producer(config)
acked = []
failed = []


def delivered(err, msg):
    if err is None:
        acked.append(f"{msg.partition()} {msg.offset()} {msg.value().decode()}")
    else:
        failed.append(str(err))


last_report = time.monotonic()


def report_progress(sent):
    """Every 2 s, one line on stderr: a stall shows as numbers that stop."""
    global last_report
    now = time.monotonic()
    if now - last_report >= 2:
        last_report = now
        print(f"progress: sent {sent} acked {len(acked)} failed {len(failed)} "
              f"queued {len(producer)}", file=sys.stderr, flush=True)


for i in range(count):
    report_progress(i)
    while True:
        try:
            producer.produce(topic, value=str(i).encode(), partition=i % partitions,
                             on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.05)
            report_progress(i)
    producer.poll(0)
left = len(producer)
flush_until = time.monotonic() + 150
while left > 0 and time.monotonic() < flush_until:
    left = producer.flush(2)
    report_progress(count)
with open(out_path, "w") as out:
    out.write("\n".join(acked) + "\n")
print(f"acked {len(acked)} failed {len(failed)} unflushed {left}"
      + (f" first failure: {failed[0]}" if failed else ""))
sys.exit(0 if left == 0 else 1)
