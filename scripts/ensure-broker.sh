#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 (KIWITRIO_BROKER_HOST/PORT override).
#
#   1. If something answers there already: say so and stop (a running broker is never touched).
#   2. Else, if rabbitmq-server is installed: start it detached and wait for the port.
#   3. Else: install it with apt-get (as root, or through sudo), start it and wait.
#
# Idempotent. Exits non-zero with a message saying why if no broker answers in the end.
# KIWITRIO_BROKER_WAIT sets how long to wait for the port (seconds, default 60).
set -euo pipefail

HOST="${KIWITRIO_BROKER_HOST:-127.0.0.1}"
PORT="${KIWITRIO_BROKER_PORT:-5672}"
WAIT="${KIWITRIO_BROKER_WAIT:-60}"
# rabbitmq-server lives in /usr/sbin, which is not on every user's PATH.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { echo "ensure-broker: $*"; }
die() { echo "ensure-broker: ERROR: $*" >&2; exit 1; }

answers() {
    # A TCP connect through bash's /dev/tcp, bounded so that a black-holed port cannot hang us.
    timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
}

wait_for_port() {
    local start=$SECONDS
    say "waiting up to ${WAIT}s for $HOST:$PORT ..."
    while (( SECONDS - start < WAIT )); do
        if answers; then
            say "broker answers on $HOST:$PORT (after $((SECONDS - start))s)"
            return 0
        fi
        sleep 1
    done
    return 1
}

# Run a command as root: directly when we are root, else through sudo when we may.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 126
    fi
}

can_be_root() {
    [[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

start_broker() {
    say "starting RabbitMQ: rabbitmq-server -detached"
    local log
    log=$(mktemp -t kiwitrio-rabbitmq-start.XXXXXX)
    # The Debian script drops to the rabbitmq user itself when run as root. If the node is
    # already running (still booting), this fails harmlessly and we just wait for the port.
    if can_be_root; then
        as_root rabbitmq-server -detached >"$log" 2>&1 || say "rabbitmq-server -detached exited with $? (see below)"
    else
        rabbitmq-server -detached >"$log" 2>&1 || say "rabbitmq-server -detached exited with $? (see below)"
    fi
    if [[ -s $log ]]; then
        sed 's/^/    /' "$log"
    fi
    rm -f "$log"
}

if answers; then
    say "a broker already answers on $HOST:$PORT; nothing to do"
    exit 0
fi
say "nothing answers on $HOST:$PORT"

if [[ $HOST != 127.0.0.1 && $HOST != localhost ]]; then
    die "$HOST is not this machine: start the broker there yourself"
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    say "rabbitmq-server is not installed"
    command -v apt-get >/dev/null 2>&1 \
        || die "rabbitmq-server is missing and there is no apt-get to install it; install RabbitMQ yourself (https://www.rabbitmq.com/docs/download)"
    can_be_root \
        || die "rabbitmq-server is missing and installing it needs root (run as root, or allow sudo without a password)"
    say "installing it: apt-get update && apt-get install -y rabbitmq-server (takes a minute)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq || die "apt-get update failed"
    # The package's postinst may try to start the service (and fail without an init system);
    # whether it did is checked below.
    as_root apt-get install -y -qq rabbitmq-server \
        || command -v rabbitmq-server >/dev/null 2>&1 \
        || die "apt-get install rabbitmq-server failed"
    say "installed $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server 2>/dev/null || echo rabbitmq-server)"
    if answers; then
        say "the package started the broker; it answers on $HOST:$PORT"
        exit 0
    fi
fi

start_broker
if wait_for_port; then
    exit 0
fi
die "no broker answers on $HOST:$PORT after ${WAIT}s. Look at /var/log/rabbitmq/ (or run 'rabbitmq-server' in the foreground to see why it does not start)."
