#!/usr/bin/env bash
# The product's main job, as a demo: a lab AD domain (Samba AD DC), a simulated Entra ID
# tenant (graph-sim) with sample users and groups, the three services over RabbitMQ,
# writeback switched on. Leaves everything running so you can look at the result.
#
#   scripts/demo.sh [--exchange]   start (or restart) the demo on a lab domain with
#                                  Exchange's schema and an organisation (the default):
#                                  the Microsoft 365 group is written back as a
#                                  RemoteGroupMailbox next to the security groups
#   scripts/demo.sh --plain        the same on a plain lab domain (the M365 group is
#                                  then skipped, with the reason)
#   scripts/demo.sh down           stop it and remove the lab domain
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO="$ROOT/.demo"
BIN="$ROOT/target/debug"
NAMESPACE=gwb-demo
SIM_ADDR=127.0.0.1:8600
CONTROL=127.0.0.1:50051
SERVICES="gwb-collector gwb-writer gwb-planner graph-sim"

stop_services() {
    for name in $SERVICES; do
        if [ -f "$DEMO/$name.pid" ]; then
            pid=$(cat "$DEMO/$name.pid")
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pid" 2>/dev/null || true
            fi
            rm -f "$DEMO/$name.pid"
        fi
    done
}

VARIANT=--exchange
case "${1:-up}" in
    up | --exchange) ;;
    --plain) VARIANT= ;;
    down) ;;
    *) echo "usage: scripts/demo.sh [--exchange | --plain | down]" >&2; exit 2 ;;
esac

if [ "${1:-up}" = down ]; then
    stop_services
    scripts/lab-ad.sh down demo
    rm -rf "$DEMO"
    echo "demo stopped"
    exit 0
fi

start=$(date +%s)
scripts/ensure-rabbitmq.sh
# Every run starts from a fresh lab domain and tenant, so what you see is this run's.
stop_services
scripts/lab-ad.sh down demo >/dev/null 2>&1 || true
# shellcheck disable=SC2086 # VARIANT is one word or none
scripts/lab-ad.sh up demo $VARIANT >/dev/null
set -a; . "$(scripts/lab-ad.sh env demo)"; set +a

echo "==> building"
cargo build --workspace --bins --quiet

stop_services
rm -rf "$DEMO"
mkdir -p "$DEMO/logs"
umask 077
printf 'demo-client-secret' >"$DEMO/client-secret"
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$DEMO/control-token"
cp "$GWB_LAB_LDAP_PASSWORD_FILE" "$DEMO/bind-password"
umask 022
TENANT=11111111-2222-3333-4444-555555555555
CLIENT=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee
TARGET_OU="OU=Cloud Groups,$GWB_LAB_BASE_DN"

cat >"$DEMO/gwb-collector.toml" <<TOML
[graph]
login_endpoint = "http://$SIM_ADDR"
graph_endpoint = "http://$SIM_ADDR"
scope = "https://graph.microsoft.com/.default"
tenant_id = "$TENANT"
client_id = "$CLIENT"
client_secret_file = "$DEMO/client-secret"
api_version = "beta"

[collector]
poll_interval_seconds = 1
state_path = "$DEMO/collector.db"

[bus]
namespace = "$NAMESPACE"
TOML
cat >"$DEMO/gwb-planner.toml" <<TOML
[planner]
state_path = "$DEMO/planner.db"
default_ou = "$TARGET_OU"
name_template = "display_name"

[scope]
security_groups = true

[planner.control]
listen = "$CONTROL"
token_file = "$DEMO/control-token"

[bus]
namespace = "$NAMESPACE"
TOML
cat >"$DEMO/gwb-writer.toml" <<TOML
[directory]
url = "$GWB_LAB_LDAP_URL"
ca_file = "$GWB_LAB_LDAP_CA_FILE"
bind_dn = "$GWB_LAB_LDAP_BIND_DN"
bind_password_file = "$DEMO/bind-password"
managed_ous = ["$TARGET_OU"]

[bus]
namespace = "$NAMESPACE"
TOML

launch() {
    local name=$1; shift
    # The lab's GWB_LAB_* variables (all of them, whatever lab-ad.sh exports) are for
    # the scripts: a service reads GWB_* as configuration and refuses unknown keys.
    local unset=()
    for var in $(compgen -e | grep '^GWB_LAB_'); do unset+=(-u "$var"); done
    env "${unset[@]}" nohup "$BIN/$name" "$@" >"$DEMO/logs/$name.log" 2>&1 &
    echo $! >"$DEMO/$name.pid"
}

echo "==> starting graph-sim (simulated Entra ID tenant) on http://$SIM_ADDR"
launch graph-sim --listen "$SIM_ADDR" --tenant-id "$TENANT" --client-id "$CLIENT" \
    --client-secret-file "$DEMO/client-secret" --addr-file "$DEMO/graph-sim.addr"
for _ in $(seq 100); do [ -s "$DEMO/graph-sim.addr" ] && break; sleep 0.1; done
[ -s "$DEMO/graph-sim.addr" ] || { echo "graph-sim did not start; see $DEMO/logs/graph-sim.log" >&2; exit 1; }

echo "==> seeding: users in AD, the same users synced in the tenant, cloud groups"
"$BIN/gwb-demo-seed" "http://$SIM_ADDR" "Cloud Groups"

echo "==> starting gwb-planner, gwb-writer, gwb-collector"
for name in gwb-planner gwb-writer gwb-collector; do launch "$name" --config "$DEMO/$name.toml"; done

export GWB_CONTROL_ENDPOINT="http://$CONTROL" GWB_CONTROL_TOKEN_FILE="$DEMO/control-token"
for _ in $(seq 100); do "$BIN/gwbctl" status >/dev/null 2>&1 && break; sleep 0.2; done
echo "==> switching writeback on (gwbctl enable)"
"$BIN/gwbctl" enable >/dev/null

# Three security groups, and the Microsoft 365 group on the Exchange lab.
expected=3
[ -n "$VARIANT" ] && expected=4
written=0
for _ in $(seq 150); do
    written=$("$BIN/gwbctl" groups --state written --json | grep -c '"id"' || true)
    [ "$written" -ge "$expected" ] && break
    sleep 0.2
done
echo
"$BIN/gwbctl" status
echo
"$BIN/gwbctl" groups
echo
if [ -n "$VARIANT" ]; then
    echo "==> the Microsoft 365 group as written (mail attributes, over LDAPS)"
    LDAPTLS_CACERT=$GWB_LAB_LDAP_CA_FILE ldapsearch -LLL -o ldif-wrap=no -H "$GWB_LAB_LDAP_URL" \
        -D "$GWB_LAB_LDAP_BIND_DN" -y "$GWB_LAB_LDAP_PASSWORD_FILE" -b "$TARGET_OU" \
        '(&(objectClass=group)(mailNickname=*))' cn groupType mail mailNickname proxyAddresses \
        msExchRecipientTypeDetails msExchRecipientDisplayType targetAddress member adminDescription
fi
echo "Demo ready in $(( $(date +%s) - start )) s: $written groups written back to $TARGET_OU."
cat <<TXT

Look at the result:
  export GWB_CONTROL_ENDPOINT=http://$CONTROL GWB_CONTROL_TOKEN_FILE=$DEMO/control-token
  target/debug/gwbctl status
  target/debug/gwbctl groups
  LDAPTLS_CACERT=$GWB_LAB_LDAP_CA_FILE ldapsearch -LLL -H $GWB_LAB_LDAP_URL -D '$GWB_LAB_LDAP_BIND_DN' -y $GWB_LAB_LDAP_PASSWORD_FILE \\
      -b '$TARGET_OU' '(objectClass=group)' cn sAMAccountName groupType member adminDescription

Change the tenant and watch AD follow within seconds (graph-sim admin API, see crates/graph-sim/README.md):
  curl -s http://$SIM_ADDR/admin/stats
Logs: $DEMO/logs/   Stop: scripts/demo.sh down
TXT
