#!/usr/bin/env bash
# Measures AWS requests per 1,000 input events through the AWS topology, against the local
# emulator (make services), for a first crawl (every asset new) and a steady crawl (later runs
# of the same crawler, most assets unchanged). The figures come from assetflow's own request
# counters (the `aws requests` line of its summary).
#   usage: scripts/aws-requests.sh [ASSETS_PER_SOURCE] [SOURCES]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${ASSETFLOW_BIN:-$here/target/release/assetflow}")"
py="$here/.services/venv/bin/python"
endpoint="${ASSETFLOW_TEST_AWS_ENDPOINT:-http://127.0.0.1:4566}"
assets="${1:-1000}"
sources="${2:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
tag="bench$$"
"$bin" gen --sources "$sources" --assets "$assets" --runs 1 --missing 0 --bad 0 --redeliver 0 --out first.jsonl 2>/dev/null
"$bin" gen --sources "$sources" --assets "$assets" --runs 4 --churn 0.05 --missing 0 --bad 0 --redeliver 0 --out all.jsonl 2>/dev/null
tail -n +"$(( $(wc -l <first.jsonl) + 1 ))" all.jsonl >steady.jsonl

ENDPOINT="$endpoint" TAG="$tag" "$py" - <<'PY'
import boto3, os, json
kw = dict(endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
tag = os.environ["TAG"]
k, q = boto3.client("kinesis", **kw), boto3.client("sqs", **kw)
for stream in ("first", "steady"):
    k.create_stream(StreamName=f"{tag}-{stream}", ShardCount=2)
urls = {n: q.create_queue(QueueName=f"{tag}-{n}")["QueueUrl"] for n in ("upsert", "drop", "dead")}
json.dump(urls, open("queues.json", "w"))
PY

put() { # file stream
  ENDPOINT="$endpoint" FILE="$1" STREAM="$2" "$py" - <<'PY'
import boto3, os, json
k = boto3.client("kinesis", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench")
lines = open(os.environ["FILE"], "rb").read().splitlines()
for i in range(0, len(lines), 500):
    recs = [{"Data": l, "PartitionKey": json.loads(l).get("source", "x")} for l in lines[i:i + 500]]
    k.put_records(StreamName=os.environ["STREAM"], Records=recs)
PY
}

config() { # stream
  "$py" - "$1" <<PY
import json, sys
u = json.load(open("queues.json"))
print(f'''[pipeline]
state_dir = "state"
[[sources]]
kind = "kinesis"
stream = "{sys.argv[1]}"
follow = false
[decisor]
hash_ignore = ["stats.row_count"]
[control]
kind = "dynamodb"
table = "$tag-control"
create_if_missing = true
[content]
kind = "s3"
bucket = "$tag-content"
create_if_missing = true
[sinks.upsert]
kind = "sqs"
queue_url = "{u['upsert']}"
[sinks.drop]
kind = "sqs"
queue_url = "{u['drop']}"
[sinks.dead_letter]
kind = "sqs"
queue_url = "{u['dead']}"
[admin]
listen = ""
[aws]
endpoint_url = "$endpoint"
access_key_id = "bench"
secret_access_key = "bench"''')
PY
}

for crawl in first steady; do
  put "$crawl.jsonl" "$tag-$crawl"
  config "$tag-$crawl" >"$crawl.toml"
  echo "== $crawl crawl: $(wc -l <"$crawl.jsonl") events"
  RUST_LOG=error "$bin" run --config "$crawl.toml" 2>&1 | grep -E "events in|decisions|aws requests"
done
