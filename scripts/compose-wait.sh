#!/usr/bin/env bash
# Waits until every container of the compose project is running and, where it has a
# healthcheck, healthy: `docker compose up --wait` for Compose v1 (docker-compose 1.29,
# Debian 12's package, has no --wait). Uses the same COMPOSE_* environment.
#
#   scripts/compose-wait.sh [TIMEOUT_SECONDS=300] [SERVICE...]
set -euo pipefail
timeout=${1:-300}
shift || true
deadline=$((SECONDS + timeout))
while :; do
    ids=$(docker-compose ps -q "$@")
    waiting=()
    for id in $ids; do
        read -r name state health < <(docker inspect --format \
            '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
        if [[ $state != running || ($health != healthy && $health != none) ]]; then
            waiting+=("${name#/}:$state/$health")
        fi
    done
    if [[ -n $ids && ${#waiting[@]} -eq 0 ]]; then
        echo "compose-wait: $(wc -w <<<"$ids") containers running and healthy" >&2
        exit 0
    fi
    if ((SECONDS >= deadline)); then
        echo "compose-wait: not healthy after ${timeout}s: ${waiting[*]:-no containers}" >&2
        exit 1
    fi
    sleep 2
done
