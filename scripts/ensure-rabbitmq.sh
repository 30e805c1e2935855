#!/usr/bin/env bash
# Makes sure a local RabbitMQ broker answers on 127.0.0.1:5672 with the plugins the
# product relies on (management, prometheus, consistent-hash exchange).
# Idempotent: a healthy broker is left alone.
set -euo pipefail

HOST=127.0.0.1
PORT=5672
PLUGINS=(rabbitmq_management rabbitmq_prometheus rabbitmq_consistent_hash_exchange)
START_TIMEOUT=60

log() { printf 'ensure-rabbitmq: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() {
    # bash's /dev/tcp avoids depending on nc; the subshell closes the socket again.
    timeout 2 bash -c "exec 3<>/dev/tcp/${HOST}/${PORT}" 2>/dev/null
}

broker_healthy() {
    port_open && timeout 20 rabbitmqctl -q status >/dev/null 2>&1
}

install_broker() {
    [[ $(id -u) -eq 0 ]] || die "rabbitmq-server is not installed and installing it needs root"
    log "installing rabbitmq-server"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y rabbitmq-server >/dev/null 2>&1; then
        # A fresh machine may have no package lists yet; one refresh is enough.
        apt-get update >/dev/null || die "apt-get update failed"
        apt-get install -y rabbitmq-server >/dev/null || die "apt-get install rabbitmq-server failed"
    fi
}

start_broker() {
    log "starting rabbitmq-server"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        systemctl start rabbitmq-server || rabbitmq-server -detached
    else
        rabbitmq-server -detached
    fi
    local waited=0
    until broker_healthy; do
        ((waited >= START_TIMEOUT)) && die "RabbitMQ did not answer on ${HOST}:${PORT} within ${START_TIMEOUT}s (see /var/log/rabbitmq/)"
        sleep 2
        waited=$((waited + 2))
    done
    log "RabbitMQ answers after ${waited}s"
}

enable_plugins() {
    local enabled missing=()
    enabled=$(rabbitmq-plugins list -e -m 2>/dev/null) || die "rabbitmq-plugins list failed"
    for plugin in "${PLUGINS[@]}"; do
        grep -qx "$plugin" <<<"$enabled" || missing+=("$plugin")
    done
    if ((${#missing[@]} > 0)); then
        # enable applies online to the running node; no restart, no dropped connections.
        log "enabling plugins: ${missing[*]}"
        rabbitmq-plugins enable "${missing[@]}" >/dev/null || die "rabbitmq-plugins enable ${missing[*]} failed"
    fi
}

if ! command -v rabbitmqctl >/dev/null 2>&1; then
    install_broker
fi

if broker_healthy; then
    log "RabbitMQ already running on ${HOST}:${PORT}"
else
    start_broker
fi

enable_plugins
log "ready: amqp://guest:guest@${HOST}:${PORT}/ (management http://${HOST}:15672/)"
