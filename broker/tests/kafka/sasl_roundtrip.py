"""confluent-kafka over SASL_SSL (SCRAM): produce N messages with acks=all, read them
back as a consumer group, print how many came back.

Exit status: 0 on success, 3 when the broker refused the login (the error callback
or the delivery reports say so), 1 on anything else.

usage: sasl_roundtrip.py BROKERS CA_FILE MECHANISM USER PASSWORD TOPIC COUNT
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer

brokers, ca, mechanism, user, password, topic, count = sys.argv[1:8]
count = int(count)
security = {
    "bootstrap.servers": brokers,
    "security.protocol": "SASL_SSL",
    "ssl.ca.location": ca,
    "sasl.mechanisms": mechanism,
    "sasl.username": user,
    "sasl.password": password,
}
refused = []


def on_error(err):
    if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        refused.append(err)


producer = Producer(dict(security, **{"acks": "all", "error_cb": on_error, "message.timeout.ms": 20000}))
delivered = []
failed = []


def on_delivery(err, msg):
    if err is None:
        delivered.append(msg.offset())
    else:
        failed.append(err)


for i in range(count):
    while True:
        try:
            producer.produce(topic, value=f"m{i}".encode(), callback=on_delivery)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
    if refused:
        break
deadline = time.time() + 60
while len(delivered) + len(failed) < count and time.time() < deadline and not refused:
    producer.poll(0.1)
if refused:
    print(f"refused: {refused[0]}", file=sys.stderr)
    sys.exit(3)
if failed or len(delivered) != count:
    print(f"delivered {len(delivered)} of {count}; failures: {failed[:3]}", file=sys.stderr)
    sys.exit(1)

consumer = Consumer(
    dict(
        security,
        **{
            "group.id": "sasl-readers",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "error_cb": on_error,
        },
    )
)
consumer.subscribe([topic])
seen = set()
deadline = time.time() + 60
while len(seen) < count and time.time() < deadline and not refused:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    seen.add(msg.value().decode())
consumer.close()
if refused:
    sys.exit(3)
print(len(seen))
sys.exit(0 if len(seen) == count else 1)
