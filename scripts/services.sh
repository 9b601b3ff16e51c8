#!/usr/bin/env bash
# Makes sure the local PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are up,
# starting them when they are down. Fails loudly when either cannot be reached: the tests
# need the real servers and never skip.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
AMQP_HOST=${AMQP_HOST:-127.0.0.1}
AMQP_PORT=${AMQP_PORT:-5672}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$PG_HOST" -p "$PG_PORT"
  else
    port_open "$PG_HOST" "$PG_PORT"
  fi
}

wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do
    if "$@"; then return 0; fi
    sleep 1
  done
  echo "error: $what did not come up within ${secs}s" >&2
  return 1
}

if ! pg_ready; then
  echo "PostgreSQL is not answering on $PG_HOST:$PG_PORT; starting it" >&2
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    for v in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    done
  else
    echo "error: PostgreSQL is not running here and is not installed as Debian installs it." >&2
    echo "  Debian/Ubuntu: sudo apt-get install postgresql, then allow local trust for user postgres" >&2
    echo "  (or point AUTHBRIDGE_DATABASE_URL / AUTHBRIDGE_TEST_ADMIN_DATABASE_URL at one you have)." >&2
    echo "  macOS: brew install postgresql@15 && brew services start postgresql@15" >&2
    exit 1
  fi
  wait_for "PostgreSQL" 60 pg_ready
fi

rabbit_ready() { port_open "$AMQP_HOST" "$AMQP_PORT"; }

if ! rabbit_ready; then
  echo "RabbitMQ is not answering on $AMQP_HOST:$AMQP_PORT; starting it" >&2
  if command -v rabbitmq-server >/dev/null 2>&1; then
    rabbitmq-server -detached || true
  else
    echo "error: RabbitMQ is not running here and is not installed." >&2
    echo "  Debian/Ubuntu: sudo apt-get install rabbitmq-server (it starts with guest/guest on localhost)" >&2
    echo "  (or point AUTHBRIDGE_AMQP_URL at one you have). macOS: brew install rabbitmq && brew services start rabbitmq" >&2
    echo "  Docker: docker run -d -p 5672:5672 rabbitmq:3.13" >&2
    exit 1
  fi
  wait_for "RabbitMQ" 120 rabbit_ready
fi
if command -v rabbitmqctl >/dev/null 2>&1; then
  # The port opens before the broker accepts work; wait for it to finish booting.
  timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1 || {
    echo "error: RabbitMQ is listening but did not finish starting" >&2
    exit 1
  }
fi
echo "PostgreSQL and RabbitMQ are up" >&2
