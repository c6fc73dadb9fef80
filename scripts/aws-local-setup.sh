#!/usr/bin/env bash
# Creates what examples/aws.toml expects on the local emulator, and puts examples/events.jsonl
# on the stream (partition key = source). Idempotent. As in the serverless design, the upsert
# and drop queues hand a message that failed maxReceiveCount times to their own dead-letter
# queues (upsert-queue-dlq, drop-queue-dlq) through a redrive policy.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/services.sh" start >/dev/null
ENDPOINT="${ASSETFLOW_TEST_AWS_ENDPOINT:-http://127.0.0.1:4566}" EVENTS="$here/examples/events.jsonl" \
  "$here/.services/venv/bin/python" - <<'PY'
import boto3, json, os, time
kw = dict(endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1", aws_access_key_id="local", aws_secret_access_key="local")
k, q = boto3.client("kinesis", **kw), boto3.client("sqs", **kw)
if "asset-input" not in k.list_streams()["StreamNames"]:
    k.create_stream(StreamName="asset-input", ShardCount=2)
    time.sleep(0.5)
for name in ("upsert-queue", "drop-queue"):
    dlq = q.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    arn = q.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
    url = q.create_queue(QueueName=name)["QueueUrl"]
    q.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": policy})
    print(url, "->", dlq)
print(q.create_queue(QueueName="asset-dead-letters")["QueueUrl"])
print(q.create_queue(QueueName="asset-dead-letters-parked")["QueueUrl"], "(parked dead letters)")
lines = open(os.environ["EVENTS"], "rb").read().splitlines()
def key(l):
    try:
        return json.loads(l).get("source", "unkeyed")
    except Exception:
        return "unkeyed"
k.put_records(StreamName="asset-input", Records=[{"Data": l, "PartitionKey": key(l)} for l in lines])
print(f"put {len(lines)} events on asset-input")
PY
