#!/usr/bin/env python3
"""Publish notifications to tidings straight to Kafka, as a business system would.

Records go to `<prefix>.ingest` in the Confluent wire format: byte 0, the schema id as 4
big-endian bytes, then the Avro body of a `NotificationRequest`. tidings validates each one
exactly like an HTTP send; a record it cannot use lands on `<prefix>.dlq` with its reason.

    pip install confluent-kafka fastavro

    # with a schema registry (tidings migrate registered <prefix>.ingest-value)
    python3 producer.py --brokers localhost:9092 --registry http://localhost:8081 \
        --tenant "$TENANT_ID" --user alice --title "Order shipped" --body "A-17 is on its way"

    # without one: the ids pinned in tidings' manifest (`tidings schemas` prints them)
    python3 producer.py --brokers localhost:9092 --schema-file schemas/avro/NotificationRequest.avsc \
        --schema-id 4 --tenant "$TENANT_ID" --user alice --title hi --body there

`--evolve` registers (and writes with) a later version of the schema, the way a producer's
schema evolves: one field added with a default, one optional field removed. tidings reads it
by Avro schema resolution. `--bad` also publishes the records tidings must dead-letter.
"""

import argparse
import io
import json
import struct
import sys
import urllib.request

import fastavro
from confluent_kafka import Producer


def registry_call(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method)
    req.add_header("Content-Type", "application/vnd.schemaregistry.v1+json")
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(req, data=data, timeout=10) as r:
        return json.loads(r.read())


def evolve(schema):
    """A later version: `campaign` added (with a default), `locale` removed."""
    s = json.loads(json.dumps(schema))
    s["fields"] = [f for f in s["fields"] if f["name"] != "locale"]
    s["fields"].append({"name": "campaign", "type": "string", "default": ""})
    return s


def frame(schema_id, parsed, record):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--prefix", default="tidings", help="tidings' topic prefix")
    p.add_argument("--registry", help="schema registry URL")
    p.add_argument("--schema-file", help="the .avsc to write with, without a registry")
    p.add_argument("--schema-id", type=int, help="its pinned id, without a registry")
    p.add_argument("--evolve", action="store_true", help="register and write a later version")
    p.add_argument("--bad", action="store_true", help="also publish records tidings must dead-letter")
    p.add_argument("--tenant", required=True)
    p.add_argument("--user", action="append", required=True)
    p.add_argument("--title", default="hello")
    p.add_argument("--body", default="from Kafka")
    p.add_argument("--priority", default="normal")
    p.add_argument("--count", type=int, default=1)
    a = p.parse_args()

    topic = f"{a.prefix}.ingest"
    subject = f"{topic}-value"
    if a.registry:
        latest = registry_call(f"{a.registry}/subjects/{subject}/versions/latest")
        schema = json.loads(latest["schema"])
        schema_id = latest["id"]
        if a.evolve:
            schema = evolve(schema)
            schema_id = registry_call(
                f"{a.registry}/subjects/{subject}/versions", "POST", {"schema": json.dumps(schema)}
            )["id"]
    else:
        if not (a.schema_file and a.schema_id is not None):
            sys.exit("without --registry, give --schema-file and --schema-id")
        with open(a.schema_file) as f:
            schema = json.load(f)
        schema_id = a.schema_id
        if a.evolve:
            sys.exit("--evolve needs a registry (tidings resolves other versions there)")
    parsed = fastavro.parse_schema(schema)

    producer = Producer({"bootstrap.servers": a.brokers, "enable.idempotence": True, "acks": "all"})
    failures = []

    def delivered(err, _msg):
        if err is not None:
            failures.append(str(err))

    def send(value):
        producer.produce(topic, key=a.tenant.encode(), value=value, on_delivery=delivered)

    if a.bad:
        good = {"tenant_id": a.tenant, "to_users": a.user, "title": "bad", "body": "bad"}
        good.update({"campaign": ""} if a.evolve else {})
        send(b"\x01" + frame(schema_id, parsed, good)[1:])  # bad magic byte
        send(frame(999999, parsed, good))  # a schema id nobody registered
        send(frame(schema_id, parsed, good)[:9])  # a body cut short
        send(b"\x00\x00")  # shorter than the header
        unknown = dict(good, tenant_id="no-such-tenant")
        send(frame(schema_id, parsed, unknown))  # decodes, but fails validation
    for i in range(a.count):
        record = {
            "tenant_id": a.tenant,
            "to_users": a.user,
            "title": a.title if a.count == 1 else f"{a.title} {i}",
            "body": a.body,
            "priority": a.priority,
            "data_json": json.dumps({"n": i}),
            "channels": ["inapp"],
        }
        if a.evolve:
            record["campaign"] = "winter"
        send(frame(schema_id, parsed, record))
    producer.flush(30)
    if failures:
        sys.exit(f"{len(failures)} records were not delivered: {failures[0]}")
    print(json.dumps({"schema_id": schema_id, "sent": a.count + (5 if a.bad else 0)}))


if __name__ == "__main__":
    main()
