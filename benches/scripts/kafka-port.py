#!/usr/bin/env python3
"""The Kafka port against the native port, side by side, on one 3-node raftmq
cluster of this build (release, fsync, 3 data groups) on loopback.

Kafka: a confluent-kafka (librdkafka) producer, acks=all, 100-byte values over
the topic's partitions; the figure that compares is the brokers' CPU time per
message (the Python client itself is slower than the brokers). Native: raftmq-bench
with the same topic shape. Both alternate REPS times.

Usage: benches/scripts/kafka-port.py [REPS]   (env COUNT, default 1000000; QUEUES, 8)
Needs: python3 -m pip install confluent-kafka; cargo build --release
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Producer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "release")
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
COUNT = int(os.environ.get("COUNT", "1000000"))
QUEUES = int(os.environ.get("QUEUES", "8"))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def start_cluster(base):
    dirs = tempfile.mkdtemp(prefix="raftmq-kafka-bench-")
    peers = ",".join(f"{i}=127.0.0.1:{base + i}" for i in (1, 2, 3))
    procs = []
    for i in (1, 2, 3):
        procs.append(subprocess.Popen([
            os.path.join(BIN, "raftmq-broker"), "--node-id", str(i),
            "--listen", f"127.0.0.1:{base + i}", "--peers", peers,
            "--kafka-listen", f"127.0.0.1:{base + 100 + i}",
            "--data-groups", "3", "--segment-bytes", str(256 << 20),
            "--data-dir", os.path.join(dirs, f"n{i}"),
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(3)
    return procs, dirs


def native(brokers, pids, topic):
    out = subprocess.run([
        os.path.join(BIN, "raftmq-bench"), "--brokers", brokers,
        "--server-pids", ",".join(str(p) for p in pids), "--topic", topic,
        "--queues", str(QUEUES), "--producers", "1", "--count", str(COUNT),
        "--message-bytes", "100",
    ], capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"([\d,.]+) msgs/s", out).group(1).replace(",", ""))
    cpu = re.search(r"([\d.]+) µs CPU/msg", out)
    return rate, float(cpu.group(1)) if cpu else float("nan"), out


def kafka(bootstrap, pids, topic):
    subprocess.run([os.path.join(BIN, "..", "release", "raftmq"), "--brokers",
                    bootstrap[0], "topic", "create", topic, "--queues", str(QUEUES), "-q"],
                   check=False)
    p = Producer({"bootstrap.servers": bootstrap[1], "acks": "all", "linger.ms": 5,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 1000000})
    value = b"x" * 100
    before = cpu_seconds(pids)
    start = time.time()
    for i in range(COUNT):
        while True:
            try:
                p.produce(topic, value, partition=i % QUEUES)
                break
            except BufferError:
                p.poll(0.01)
    p.flush(120)
    elapsed = time.time() - start
    cpu = cpu_seconds(pids) - before
    return COUNT / elapsed, cpu / COUNT * 1e6


def main():
    procs, dirs = start_cluster(27000)
    try:
        pids = [p.pid for p in procs]
        brokers = ",".join(f"127.0.0.1:{27000 + i}" for i in (1, 2, 3))
        kafka_bootstrap = ",".join(f"127.0.0.1:{27100 + i}" for i in (1, 2, 3))
        for rep in range(REPS):
            rate, cpu = kafka((brokers.split(",")[0], kafka_bootstrap), pids, f"k{rep}")
            print(f"kafka  rep {rep}: {rate:,.0f} msgs/s (client-bound), brokers {cpu:.2f} µs CPU/msg")
            rate, cpu, _ = native(brokers, pids, f"n{rep}")
            print(f"native rep {rep}: {rate:,.0f} msgs/s, {cpu:.2f} µs CPU/msg (client + brokers)")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(dirs, ignore_errors=True)


if __name__ == "__main__":
    main()
