#!/usr/bin/env bash
# The whole test suite: unit tests, and integration and end-to-end tests against the
# real RabbitMQ and a throwaway Samba AD DC (installed, provisioned and torn down here).
#
#   scripts/test.sh [cargo test args…]      GWB_KEEP_LAB=1 keeps the lab DCs running
#
# Three lab DCs: `test` (plain, as a customer's domain without Exchange), `exchange`
# (Exchange schema and an organisation, no servers: a hybrid forest) and
# `exchange-schema` (schema only, which Microsoft 365 group writeback must refuse).
set -euo pipefail
cd "$(dirname "$0")/.."

# Style first: a formatting slip or a lint fails before any lab starts.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

scripts/ensure-rabbitmq.sh
if [ "${GWB_KEEP_LAB:-0}" != 1 ]; then
    # The directory-outage test brings up its own lab ("reliability") when it runs.
    trap 'for lab in test exchange exchange-schema reliability; do scripts/lab-ad.sh down $lab >/dev/null 2>&1 || true; done' EXIT
fi
scripts/lab-ad.sh up test >/dev/null
set -a; . "$(scripts/lab-ad.sh env test)"; set +a
# `lab-ad.sh up` prints the lab's env file; crates/gwb-ldap/tests/exchange.rs reads them.
GWB_LAB_EXCHANGE_ORG_ENV=$(scripts/lab-ad.sh up exchange --exchange)
GWB_LAB_EXCHANGE_SCHEMA_ENV=$(scripts/lab-ad.sh up exchange-schema --exchange-schema-only)
export GWB_LAB_EXCHANGE_ORG_ENV GWB_LAB_EXCHANGE_SCHEMA_ENV GWB_REQUIRE_EXCHANGE_LAB=1

# The end-to-end tests run the real service binaries.
cargo build --workspace --bins
# The docker-compose deployment as the README documents it (images built offline, the
# lab run, faults, the three-node RabbitMQ cluster): skipped when no Docker engine
# answers, unless GWB_REQUIRE_DOCKER=1 (.ci/run sets it).
scripts/compose-test.sh
cargo test --workspace --no-fail-fast "$@"
