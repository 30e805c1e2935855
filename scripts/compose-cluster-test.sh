#!/usr/bin/env bash
# The lab on a three-node RabbitMQ cluster (docker-compose.cluster.yml, README "RabbitMQ
# cluster"): quorum queues replicated on all three nodes; under a steady change stream
# one node is killed (kill -9), then another is cut off the network (docker network
# disconnect) and brought back. After each, AD must equal the tenant (0 missing, 0 extra,
# 0 duplicates, 0 member differences); the stall of each fault is measured as the time a
# change made right after it takes to reach AD. Called by scripts/compose-test.sh after
# the single-broker lab is down (both publish the same loopback ports); needs its
# secrets/ (the README's lab block makes them).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\ncompose-cluster: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

WORK=$(mktemp -d /tmp/gwb-compose-cluster.XXXXXX)
STATE=$WORK/tenant.json
LAB=scripts/compose-lab.py
TIMINGS=${TIMINGS:-$WORK/timings}
export GWB_GRAPH_SIM_URL=http://127.0.0.1:38600
STARTED=$SECONDS

set -a; . deploy/lab.env; . deploy/cluster.env; set +a
[[ -s secrets/control-token ]] || die "secrets/ missing: run the README's lab block first"

cleanup() {
    local rc=$?
    [[ ${GWB_KEEP_COMPOSE:-0} == 1 ]] || docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$WORK"
    exit "$rc"
}
docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
trap cleanup EXIT

note() { printf '%-44s %s\n' "$1" "$2" | tee -a "$TIMINGS" >&2; }
verify() {
    local result
    result=$(python3 "$LAB" verify "$STATE" "${2:-240}") || {
        note "FAILED: $1" "$result"
        docker-compose ps >&2 || true
        docker-compose logs --tail=30 gwb-planner gwb-writer gwb-collector >&2 || true
        die "$1: AD does not match the tenant"
    }
    note "ok: $1" "$result"
}
stall() {
    local seconds
    seconds=$(python3 "$LAB" probe "$STATE" 300) || die "$1: a change made during the fault never reached AD ($seconds)"
    note "stall: $1" "${seconds}s"
}
running_nodes() {
    docker-compose exec -T rabbitmq rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
        jq -r '.running_nodes | length' 2>/dev/null || echo 0
}
wait_cluster() {
    local t0=$SECONDS
    until [[ $(running_nodes) == 3 ]]; do
        ((SECONDS - t0 < 180)) || die "the cluster did not get its 3 nodes back: $(docker-compose exec -T rabbitmq rabbitmqctl cluster_status 2>&1 | head -30)"
        sleep 2
    done
}
container_of() { docker-compose ps -q "$1" | head -n1; }

log "three-node cluster: up"
(umask 077 && openssl rand -hex 24 >secrets/rabbitmq-erlang-cookie)
# Debian's rabbitmq user in gwb-lab/rabbitmq has uid 999 (deploy/rabbitmq/Dockerfile).
chown 999:999 secrets/rabbitmq-erlang-cookie
t0=$SECONDS
docker-compose up -d >/dev/null 2>&1
scripts/compose-wait.sh 600
note "cluster up (healthy)" "$((SECONDS - t0))s"
wait_cluster
python3 "$LAB" seed "$STATE" 40 20 >&2
GWB_CONTROL_ENDPOINT=http://127.0.0.1:35051 GWB_CONTROL_TOKEN_FILE=secrets/control-token target/debug/gwbctl enable >/dev/null
verify "cluster: initial writeback" 300

# Every gwb queue is a quorum queue with a member on each node.
queues=$(docker-compose exec -T rabbitmq rabbitmqctl -q list_queues name type members --formatter json)
jq -e 'map(select(.name | startswith("gwb"))) | length > 0 and all(.type == "quorum" and (.members | length) == 3)' \
    <<<"$queues" >/dev/null || die "gwb queues are not quorum queues on 3 nodes: $queues"
note "ok: quorum queues on 3 nodes" "$(jq -r 'map(select(.name | startswith("gwb"))) | length' <<<"$queues") queues"

log "fault: kill -9 rabbitmq-2 during a change stream"
python3 "$LAB" stream "$STATE" 60 4 >&2 &
stream=$!
sleep 10
node=$(container_of rabbitmq-2)
kill -9 "$(docker inspect --format '{{.State.Pid}}' "$node")"
stall "rabbitmq-2 killed (kill -9)"
wait "$stream"
scripts/compose-wait.sh 300
wait_cluster
verify "cluster: node killed, back by its restart policy"

log "fault: rabbitmq-3 cut off the network, then reconnected"
network=${COMPOSE_PROJECT_NAME}_default
python3 "$LAB" stream "$STATE" 70 4 >&2 &
stream=$!
sleep 10
node=$(container_of rabbitmq-3)
docker network disconnect "$network" "$node"
stall "rabbitmq-3 disconnected"
sleep 20
docker network connect --alias rabbitmq --alias rabbitmq-3 "$network" "$node"
wait "$stream"
wait_cluster
verify "cluster: partitioned node rejoined"
note "cluster part" "$((SECONDS - STARTED))s"
