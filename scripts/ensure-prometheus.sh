#!/usr/bin/env bash
# Makes `prometheus` and `promtool` available from the Debian `prometheus` package,
# for tests that run a private Prometheus (their own config, data dir and port).
#
#   scripts/ensure-prometheus.sh        install when missing; print the prometheus path
#
# The package's own service is never left running: tests start their instances on
# free ports, and a system Prometheus on 9090 would only collide with other setups.
# Installing needs root; when the binaries are already there it needs nothing.
set -euo pipefail

log() { printf 'ensure-prometheus: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    command -v prometheus
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "prometheus is not installed and installing it needs root (apt-get install prometheus)"

LOG=${TMPDIR:-/tmp}/gwb-ensure-prometheus.log
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d answering 101 is Debian's documented way to keep maintainer scripts
# from starting the service they install. Only ours is removed afterwards.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=0
if [[ ! -e $POLICY ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    OWN_POLICY=1
fi
cleanup() { if ((OWN_POLICY)); then rm -f "$POLICY"; fi; }
trap cleanup EXIT

log "installing the Debian prometheus package"
started=$SECONDS
# --no-install-recommends: the node exporter it recommends is not needed.
if ! apt-get install -y --no-install-recommends prometheus >"$LOG" 2>&1; then
    apt-get update >>"$LOG" 2>&1 || die "apt-get update failed (see $LOG)"
    apt-get install -y --no-install-recommends prometheus >>"$LOG" 2>&1 ||
        die "apt-get install prometheus failed (see $LOG)"
fi
log "installed in $((SECONDS - started))s"

# With systemd the unit may still have been enabled; stop and disable it so nothing
# listens on 9090 behind the tests' back.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus >>"$LOG" 2>&1 || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null ||
    die "the prometheus package did not provide prometheus and promtool"
command -v prometheus
