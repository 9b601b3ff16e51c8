#!/usr/bin/env bash
# The run command: the whole system on this machine (gateway :8080, proxy :8081,
# refresher :8082, mock provider :9090) against the local PostgreSQL and RabbitMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
exec cargo run --locked -p devstack
