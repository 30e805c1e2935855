#!/usr/bin/env bash
# The whole test suite: unit tests, and integration and end-to-end tests against the
# real RabbitMQ and a throwaway Samba AD DC (installed, provisioned and torn down here).
#
#   scripts/test.sh [cargo test args…]      GWB_KEEP_LAB=1 keeps the lab DC running
set -euo pipefail
cd "$(dirname "$0")/.."

# Style first: a formatting slip or a lint fails in seconds, before any lab starts.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

scripts/ensure-rabbitmq.sh
scripts/lab-ad.sh up test >/dev/null
if [ "${GWB_KEEP_LAB:-0}" != 1 ]; then
    # The directory-outage test brings up its own lab ("reliability") when it runs.
    trap 'scripts/lab-ad.sh down test >/dev/null; scripts/lab-ad.sh down reliability >/dev/null 2>&1 || true' EXIT
fi
set -a; . "$(scripts/lab-ad.sh env test)"; set +a

# The end-to-end tests run the real service binaries.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
