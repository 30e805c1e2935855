#!/usr/bin/env bash
# The docker-compose deployment, for real: the README's lab commands (README
# "Deployment", the blocks marked `compose-test:`) are extracted and run as written,
# then the deployment is checked and broken on purpose. Each step ends with AD (read in
# the samba-dc container over LDAPS) compared to the graph-sim tenant: 0 missing,
# 0 extra, 0 duplicate groups, 0 member differences.
#
#   scripts/compose-test.sh          GWB_KEEP_COMPOSE=1 leaves the lab running
#
# With no Docker engine answering it skips (exit 0), unless GWB_REQUIRE_DOCKER=1
# (.ci/run sets it): then a missing engine fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\ncompose-test: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

if ! docker info >/dev/null 2>&1 || ! command -v docker-compose >/dev/null 2>&1; then
    if [[ ${GWB_REQUIRE_DOCKER:-0} == 1 ]]; then
        die "no Docker engine (or no docker-compose) answers, and GWB_REQUIRE_DOCKER=1"
    fi
    log "no Docker engine answers: skipped"
    exit 0
fi

WORK=$(mktemp -d /tmp/gwb-compose-test.XXXXXX)
STATE=$WORK/tenant.json
TIMINGS=$WORK/timings
LAB=scripts/compose-lab.py
export GWB_GRAPH_SIM_URL=http://127.0.0.1:38600
PROM=http://127.0.0.1:39090
STARTED=$SECONDS
PASSED=0
FAILED=0

# readme_block NAME: the ```sh block after `<!-- compose-test: NAME -->` in README.md.
readme_block() {
    awk -v marker="<!-- compose-test: $1 -->" '
        $0 == marker { found = 1; next }
        found && /^```sh$/ { inside = 1; next }
        inside && /^```$/ { exit }
        inside { print }' README.md
}

# timed LABEL COMMAND...: runs it, records the seconds.
timed() {
    local label=$1 t0=$SECONDS
    shift
    "$@"
    printf '%-44s %4ss\n' "$label" "$((SECONDS - t0))" | tee -a "$TIMINGS" >&2
}

verify() {
    local label=$1 timeout=${2:-180} result
    if result=$(python3 "$LAB" verify "$STATE" "$timeout"); then
        PASSED=$((PASSED + 1))
        printf '%-44s %s\n' "ok: $label" "$result" | tee -a "$TIMINGS" >&2
    else
        FAILED=$((FAILED + 1))
        printf '%-44s %s\n' "FAILED: $label" "$result" | tee -a "$TIMINGS" >&2
        docker-compose ps >&2 || true
        docker-compose logs --tail=30 gwb-planner gwb-writer gwb-collector >&2 || true
        die "$label: AD does not match the tenant"
    fi
}

# stall LABEL: one change right after a fault; seconds until AD shows it.
stall() {
    local seconds
    seconds=$(python3 "$LAB" probe "$STATE" 240) || die "$1: a change made after the fault never reached AD ($seconds)"
    printf '%-44s %ss\n' "stall: $1" "$seconds" | tee -a "$TIMINGS" >&2
}

check_pass() {
    PASSED=$((PASSED + 1))
    printf '%-44s\n' "ok: $1" | tee -a "$TIMINGS" >&2
}

container_of() { docker-compose ps -q "$1" | head -n1; }

# wait_refusal SERVICE PATTERN: the service does not get healthy, its log says why.
wait_refusal() {
    local service=$1 pattern=$2 id health
    for _ in $(seq 60); do
        id=$(container_of "$service")
        if [[ -n $id ]] && docker logs "$id" 2>&1 | grep -qE "$pattern"; then
            health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
            [[ $health != healthy ]] || die "$service is healthy although it logged: $pattern"
            docker logs "$id" 2>&1 | grep -E "$pattern" | tail -n1 | cut -c1-300 >&2
            return 0
        fi
        sleep 1
    done
    docker logs --tail 20 "$id" >&2 || true
    die "$service did not log /$pattern/"
}

cleanup() {
    local rc=$?
    if [[ ${GWB_KEEP_COMPOSE:-0} != 1 ]]; then
        docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
        rm -rf "$ROOT/secrets"
    fi
    if [[ -s $TIMINGS ]]; then
        log "summary (total $((SECONDS - STARTED))s):"
        cat "$TIMINGS" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}

# ---- the README's lab, as written -------------------------------------------------
set -a; . deploy/lab.env; set +a
# A previous run's lab (same project name) goes first: this run starts from nothing.
docker-compose down -v --remove-orphans >/dev/null 2>&1 || true
trap cleanup EXIT

log "README: images and docker-compose up"
readme_block up >"$WORK/up.sh"
[[ -s $WORK/up.sh ]] || die "README.md has no compose-test: up block"
t0=$SECONDS
# shellcheck disable=SC1090
. "$WORK/up.sh"
printf '%-44s %4ss\n' "README up (images + up + healthy)" "$((SECONDS - t0))" | tee -a "$TIMINGS" >&2
scripts/images.sh --list | tee -a "$TIMINGS" >&2

for service in gwb-planner gwb-writer gwb-collector graph-sim; do
    id=$(container_of "$service")
    read -r user ro < <(docker inspect --format '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}' "$id")
    [[ $user == 10001:10001 && $ro == true ]] || die "$service runs as '$user', read-only root: $ro"
done
[[ $(docker-compose ps -q gwb-writer | wc -l) == 2 ]] || die "expected 2 gwb-writer replicas"
check_pass "gwb containers: uid 10001, read-only root, 2 writers"

timed "seed tenant (60 AD users, 30 groups)" python3 "$LAB" seed "$STATE" 60 30

log "README: gwbctl enable from the host"
GWBCTL_DIR=$ROOT/target/debug
[[ -x $GWBCTL_DIR/gwbctl ]] || cargo build -p gwbctl --quiet
readme_block enable >"$WORK/enable.sh"
(PATH=$GWBCTL_DIR:$PATH; . "$WORK/enable.sh") >/dev/null
verify "initial writeback" 300

# ---- Prometheus scrapes every gwb service and RabbitMQ ---------------------------
log "Prometheus"
promql() { curl -fsS --get "$PROM/api/v1/query" --data-urlencode "query=$1"; }
t0=$SECONDS
until promql 'count(up{job=~"gwb-collector|gwb-planner|gwb-writer|rabbitmq"} == 1)' |
    jq -e '.data.result[0].value[1] == "5"' >/dev/null 2>&1; do
    ((SECONDS - t0 < 120)) || die "Prometheus: up is not 1 for the 5 targets: $(promql up)"
    sleep 3
done
promql 'sum(gwb_delta_rounds_total)' | jq -e '(.data.result[0].value[1] | tonumber) > 0' >/dev/null ||
    die "Prometheus has no gwb_delta_rounds_total"
promql 'sum(gwb_commands_total)' | jq -e '(.data.result[0].value[1] | tonumber) > 0' >/dev/null ||
    die "Prometheus has no gwb_commands_total"
check_pass "Prometheus: up=1 for collector, planner, 2 writers, rabbitmq; gwb metrics"

# ---- faults -----------------------------------------------------------------------
log "fault: kill -9 a writer during a change stream"
python3 "$LAB" stream "$STATE" 40 4 >&2 &
stream=$!
sleep 10
writer=$(container_of gwb-writer)
restarts=$(docker inspect --format '{{.RestartCount}}' "$writer")
kill -9 "$(docker inspect --format '{{.State.Pid}}' "$writer")"
stall "writer killed (kill -9)"
wait "$stream"
scripts/compose-wait.sh 120
(($(docker inspect --format '{{.RestartCount}}' "$writer") > restarts)) || die "the killed writer was not restarted"
verify "writer kill -9 (restarted by its policy)"

log "fault: RabbitMQ stopped and started during a change stream"
python3 "$LAB" stream "$STATE" 50 4 >&2 &
stream=$!
sleep 10
docker-compose stop rabbitmq >/dev/null 2>&1
sleep 10
docker-compose start rabbitmq >/dev/null 2>&1
stall "RabbitMQ stopped 10 s, started"
wait "$stream"
scripts/compose-wait.sh 180
verify "RabbitMQ stop/start"

log "fault: docker-compose down, then up (named volumes keep the state)"
python3 "$LAB" snapshot "$STATE" "$WORK/usn-before.json"
t0=$SECONDS
docker-compose down >/dev/null 2>&1
# graph-sim is the cloud: its tenant lives in memory, so the test puts the same
# tenant (same ids) back before the collector starts.
docker-compose up -d graph-sim >/dev/null 2>&1
scripts/compose-wait.sh 120 graph-sim
python3 "$LAB" restore "$STATE"
docker-compose up -d >/dev/null 2>&1
scripts/compose-wait.sh 600
printf '%-44s %4ss\n' "down + up (healthy)" "$((SECONDS - t0))" | tee -a "$TIMINGS" >&2
verify "down/up: nothing lost or duplicated"
sleep 20
python3 "$LAB" rewritten "$STATE" "$WORK/usn-before.json" || die "down/up re-wrote groups in AD"
check_pass "down/up: no group re-written (uSNChanged unchanged)"

log "scale: --scale gwb-writer=3 during a change stream"
python3 "$LAB" stream "$STATE" 30 4 >&2 &
stream=$!
docker-compose up -d --scale gwb-writer=3 >/dev/null 2>&1
wait "$stream"
scripts/compose-wait.sh 180
[[ $(docker-compose ps -q gwb-writer | wc -l) == 3 ]] || die "expected 3 gwb-writer replicas"
verify "3 writers"

log "misconfiguration: a secret file with mode 0644"
chmod 0644 secrets/control-token
docker-compose up -d --no-deps --force-recreate gwb-planner >/dev/null 2>&1
wait_refusal gwb-planner 'readable by other users'
chmod 0600 secrets/control-token
docker-compose up -d --no-deps --force-recreate gwb-planner >/dev/null 2>&1
scripts/compose-wait.sh 180
check_pass "secret 0644: planner refused to start, log says why"
verify "after the secret fix"

log "misconfiguration: an unknown config key"
mkdir -p "$WORK/config"
cp deploy/config/lab/*.toml "$WORK/config/"
printf '\n[collector.extra]\npoll_intervall_seconds = 5\n' >>"$WORK/config/gwb-collector.toml"
GWB_CONFIG_DIR=$WORK/config docker-compose up -d --no-deps --force-recreate gwb-collector >/dev/null 2>&1
wait_refusal gwb-collector 'unknown (field|key)'
docker-compose up -d --no-deps --force-recreate gwb-collector >/dev/null 2>&1
scripts/compose-wait.sh 180
check_pass "unknown key: collector refused to start, log says why"
verify "after the config fix"

printf '%-44s %4ss\n' "single-broker lab part" "$((SECONDS - STARTED))" | tee -a "$TIMINGS" >&2

# ---- the three-node RabbitMQ cluster (same loopback ports: the lab goes first) ----
if [[ ${GWB_COMPOSE_CLUSTER:-1} == 1 ]]; then
    docker-compose down -v >/dev/null 2>&1
    TIMINGS=$TIMINGS scripts/compose-cluster-test.sh
    PASSED=$((PASSED + 5))
fi

log "$PASSED passed, $FAILED failed in $((SECONDS - STARTED))s"
echo "compose: $PASSED passed, $FAILED failed"
