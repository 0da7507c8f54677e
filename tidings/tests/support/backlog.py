#!/usr/bin/env python3
"""Fill `<prefix>.requests.low` with N requests the way ingest writes them (tidings' own
framing: the schema id pinned in schemas/manifest.json), so a test has a real backlog in the
broker without N HTTP calls. Each request goes to a topic with no subscribers: routing it
costs the router a message write and nothing else."""

import io
import json
import struct
import sys
import time
import uuid

import fastavro
from confluent_kafka import Producer

brokers, prefix, tenant, count, schema_file, schema_id = sys.argv[1:7]
count, schema_id = int(count), int(schema_id)
with open(schema_file) as f:
    parsed = fastavro.parse_schema(json.load(f))
producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "compression.type": "lz4",
                     "queue.buffering.max.messages": 200000})
now = int(time.time() * 1000)
failures = []
for i in range(count):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, {
        "message_id": str(uuid.uuid4()), "tenant_id": tenant, "to_topics": ["nobody-listens"],
        "title": f"low {i}", "body": "b", "priority": "low", "channels": ["inapp"],
        "accepted_at_ms": now,
    })
    value = b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()
    while True:
        try:
            producer.produce(f"{prefix}.requests.low", key=tenant.encode(), value=value,
                             on_delivery=lambda err, _m: err and failures.append(str(err)))
            break
        except BufferError:
            producer.poll(0.05)
producer.flush(60)
if failures:
    sys.exit(f"{len(failures)} not delivered: {failures[0]}")
print(count)
