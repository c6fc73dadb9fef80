#!/usr/bin/env bash
# Starts (or stops) the local backends the tests talk to, on 127.0.0.1 only. Installs what is
# missing from the package registries (PyPI for moto). Safe to run again when they are already
# up, and as root on a fresh machine.
#
#   AWS (Kinesis, SQS, DynamoDB, S3): moto_server on $MOTO_PORT (default 4566)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
state="$here/.services"
mkdir -p "$state"
MOTO_PORT="${MOTO_PORT:-4566}"

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
  if listening "$MOTO_PORT"; then
    echo "services: moto already listening on 127.0.0.1:$MOTO_PORT"
    return 0
  fi
  if [ ! -x "$state/venv/bin/moto_server" ]; then
    echo "services: installing moto[server]==5.2.5 into $state/venv"
    python3 -m venv "$state/venv"
    "$state/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5"
  fi
  nohup "$state/venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$state/moto.log" 2>&1 &
  echo $! >"$state/moto.pid"
  wait_for "$MOTO_PORT" moto 60
  echo "services: moto on 127.0.0.1:$MOTO_PORT"
}

stop_one() { # name
  if [ -f "$state/$1.pid" ]; then
    kill "$(cat "$state/$1.pid")" 2>/dev/null || true
    rm -f "$state/$1.pid"
    echo "services: $1 stopped"
  fi
}

case "${1:-start}" in
  start) start_moto ;;
  stop) stop_one moto ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
