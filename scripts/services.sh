#!/usr/bin/env bash
# Starts (or stops) the local backends the tests talk to, on 127.0.0.1 only. Safe to run again
# when they are already up, and as root on a fresh machine. The embedded pipeline needs none;
# the AWS (moto), Kafka (tansu) and PostgreSQL services are added with their adapters.
set -euo pipefail
cmd="${1:-start}"
case "$cmd" in
  start) echo "services: nothing to start for the embedded topology" ;;
  stop) echo "services: nothing to stop" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
