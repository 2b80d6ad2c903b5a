"""kafka-python (a pure-Python client): admin create/delete, produce with acks=all,
consume as a group and commit, then check the commit survives a new consumer."""
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

bootstrap, topic, group = sys.argv[1:4]
N, P = 1000, 3

admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
admin.create_topics([NewTopic(topic, P, 3), NewTopic(topic + "-doomed", 1, 3)])
deadline = time.time() + 20
while topic not in admin.list_topics():
    assert time.time() < deadline, "created topic never listed"
    time.sleep(0.2)

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10)
futures = [producer.send(topic, key=b"k%d" % (i % 7), value=b"%d" % i) for i in range(N)]
producer.flush()
for f in futures:
    f.get(timeout=30)

consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         consumer_timeout_ms=15000)
seen = {}
for m in consumer:
    seen.setdefault(m.partition, []).append((m.offset, int(m.value)))
    if sum(len(v) for v in seen.values()) == N:
        break
values = sorted(v for part in seen.values() for _, v in part)
assert values == list(range(N)), f"consumed {len(values)} of {N}"
for part in seen.values():
    offsets = [o for o, _ in part]
    assert offsets == list(range(len(offsets))), "offsets not consecutive"
    ordered = [v for _, v in part]
    assert ordered == sorted(ordered), "a partition out of order"
consumer.commit()
committed = {p: consumer.committed(TopicPartition(topic, p)) for p in range(P)}
consumer.close()
assert sum(committed.values()) == N, f"committed {committed}"

again = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                      auto_offset_reset="earliest", consumer_timeout_ms=4000)
more = list(again)
again.close()
assert not more, f"{len(more)} messages read again after the commit"

admin.delete_topics([topic + "-doomed"])
deadline = time.time() + 20
while topic + "-doomed" in admin.list_topics():
    assert time.time() < deadline, "deleted topic still listed"
    time.sleep(0.2)
print("ok", committed)
