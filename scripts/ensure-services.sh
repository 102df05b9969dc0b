#!/usr/bin/env bash
# Start the local services the tests use, if they are not answering already.
# PostgreSQL (127.0.0.1:5432, user postgres) is required; the tests create their own databases.
# Mosquitto (127.0.0.1:1883, anonymous) carries the device protocol's MQTT tests.
# Chromium (Debian's package, /usr/bin/chromium) runs the dashboard's browser tests.
# nats-server (Debian's package) is started by the broker-cluster test itself, on free ports.
set -euo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do
    answers "$port" && return 0
    sleep 0.5
  done
  echo "ensure-services: $name is not answering on 127.0.0.1:$port" >&2
  return 1
}

if ! answers 5432; then
  echo "ensure-services: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  else
    echo "ensure-services: PostgreSQL is not installed; install postgresql (Debian) first" >&2
    exit 1
  fi
  wait_for 5432 PostgreSQL
fi

if ! answers 1883; then
  echo "ensure-services: starting Mosquitto"
  if command -v mosquitto >/dev/null 2>&1; then
    # /run is emptied at boot; the Debian config writes its pid file there.
    if [ ! -d /run/mosquitto ] && [ "$(id -u)" = 0 ]; then
      install -d -o mosquitto -g mosquitto /run/mosquitto
    fi
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
  else
    echo "ensure-services: Mosquitto is not installed; install mosquitto (Debian) first" >&2
    exit 1
  fi
  wait_for 1883 Mosquitto
fi

chromium=${HOMEPOT_TEST_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing Chromium (Debian package) for the browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    if [ ! -x "$chromium" ]; then
      echo "ensure-services: chromium is installed but $chromium is not executable;" \
        "set HOMEPOT_TEST_CHROMIUM to the Chromium binary" >&2
      exit 1
    fi
  else
    echo "ensure-services: no Chromium at $chromium; install Debian's chromium package" \
      "(sudo apt-get install chromium) or set HOMEPOT_TEST_CHROMIUM to a Chromium binary" >&2
    exit 1
  fi
fi

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing nats-server (Debian package) for the broker-cluster test"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
  else
    echo "ensure-services: no nats-server; install Debian's nats-server package" \
      "(sudo apt-get install nats-server), or tests/fleet/test_broker_cluster.py is skipped" >&2
  fi
fi
