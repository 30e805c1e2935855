#!/usr/bin/env bash
# Benchmarks of issue 8 at full scale (README.md, "Benchmarks").
#
#   scripts/bench.sh [scenario|all] [extra gwb-bench flags]
#
# Ensures RabbitMQ and a lab DC named `bench` (its own loopback address, kept between
# runs so the fixture users are reused), builds release binaries, runs the scenario(s)
# and leaves target/bench/<scenario>.json. GWB_BENCH_SCALE=smoke runs the small scale.
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIO=${1:-all}
shift || true

scripts/ensure-rabbitmq.sh >&2
ENV_FILE=$(scripts/lab-ad.sh up bench | tail -n1)
# shellcheck disable=SC1090
source "$ENV_FILE"

cargo build --release --workspace --bins >&2
exec target/release/gwb-bench "$SCENARIO" --scale "${GWB_BENCH_SCALE:-full}" \
    --bin-dir target/release --out target/bench "$@"
