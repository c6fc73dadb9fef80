#!/usr/bin/env bash
# Measures AWS requests per 1,000 input events through the AWS topology, against the local
# emulator (make services), for a first crawl (every asset new) and a steady crawl (later runs
# of the same crawler, most assets unchanged). The figures come from assetflow's own request
# counters (the `aws requests` line of its summary). The source holds its shards through a
# lease table, as several processes would: lease traffic (Scan, UpdateItem) is counted too.
#   usage: scripts/aws-requests.sh [ASSETS_PER_SOURCE] [SOURCES]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${ASSETFLOW_BIN:-$here/target/release/assetflow}")"
py="$here/.services/venv/bin/python"
endpoint="${ASSETFLOW_TEST_AWS_ENDPOINT:-http://127.0.0.1:4566}"
assets="${1:-1000}"
sources="${2:-3}"
limit="${AWS_REQUESTS_LIMIT_S:-300}" # per gen or run; a dead emulator would otherwise hang it
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
tag="bench$$"
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
lease_table = "$tag-leases-{sys.argv[1]}"
create_if_missing = true
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

# The first crawl is run 1 of the crawlers; the steady crawl is runs 2-4 of the same crawlers
# (5% of assets changed per run), put on its own stream and decided over the state run 1 left.
gen_args=(--sources "$sources" --assets "$assets" --churn 0.05 --missing 0 --bad 0 --redeliver 0)
for crawl in first steady; do
  config "$tag-$crawl" >"$crawl.toml"
  if [ "$crawl" = first ]; then runs=(--runs 1); else runs=(--runs 4 --skip-runs 1); fi
  # gen puts the events on the stream itself (the [aws] section of the crawl's config).
  RUST_LOG=warn timeout -k 10 "$limit" "$bin" gen "${gen_args[@]}" "${runs[@]}" --kinesis-stream "$tag-$crawl" --config "$crawl.toml"
  echo "== $crawl crawl"
  # The service retries an unreachable backend without end, as it should; a bench must not.
  rc=0
  RUST_LOG=error timeout -k 10 "$limit" "$bin" run --config "$crawl.toml" >"$crawl.out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      echo "$crawl crawl: no result within $limit s (AWS_REQUESTS_LIMIT_S); is the emulator at $endpoint alive? (make services)"
    else
      echo "$crawl crawl: assetflow exited with status $rc"
    fi
    tail -5 "$crawl.out"
    exit 1
  fi
  grep -E "events in|decisions|dead letters|aws requests" "$crawl.out"
done
