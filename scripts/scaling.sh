#!/usr/bin/env bash
# Events/s of a first crawl and of the steady crawl after it, for each shard count, through the
# embedded topology (file source, no enricher), as #18 measures them:
#   scripts/scaling.sh BIN WORK_DIR ASSETS_PER_SOURCE SHARDS...   (10 sources, 1.2 KB events)
# Prefix with `taskset -c 0,1` to pin to two cores; LAYOUT=files for one content file per asset. Prints one line per crawl and shard count.
set -euo pipefail
bin=$1; work=$2; assets=$3; shift 3
mkdir -p "$work"; cd "$work"
[ -f first.jsonl ] || "$bin" gen --sources 10 --assets "$assets" --runs 1 --churn 0.02 --missing 0.01 --payload 1200 --out first.jsonl 2>/dev/null
[ -f steady.jsonl ] || "$bin" gen --sources 10 --assets "$assets" --runs 2 --skip-runs 1 --churn 0.02 --missing 0.01 --payload 1200 --out steady.jsonl 2>/dev/null
for shards in "$@"; do
  rm -rf "s$shards"; mkdir -p "s$shards"
  for crawl in first steady; do
    cat > "s$shards/config.toml" <<CFG
[pipeline]
shards = $shards
state_dir = "state"
[[sources]]
kind = "file"
path = "../$crawl.jsonl"
follow = false
[enricher]
kind = "none"
[decisor]
hash_ignore = ["stats.row_count"]
[content]
kind = "dir"
path = "state/content"
layout = "${LAYOUT:-packs}"
[sinks.upsert]
kind = "file"
path = "out/upsert.jsonl"
[sinks.drop]
kind = "file"
path = "out/drop.jsonl"
[sinks.dead_letter]
kind = "file"
path = "out/dead-letter.jsonl"
[admin]
listen = ""
CFG
    (cd "s$shards" && RUST_LOG=error "$bin" run --summary-json "$crawl.json" >/dev/null 2>&1)
    echo "shards=$shards $crawl $(grep -o "\"events_per_second\":[0-9.]*" "s$shards/$crawl.json") $(grep -o "\"latency_p99_seconds\":[0-9.e-]*" "s$shards/$crawl.json")"
  done
done
