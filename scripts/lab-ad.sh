#!/usr/bin/env bash
# Throwaway Samba AD DC lab domains on loopback, for tests and demos.
#
#   scripts/lab-ad.sh up <name> [--exchange | --exchange-schema-only]
#                                    provision (or reuse) and start; prints the env file path
#   scripts/lab-ad.sh down <name>    stop it and remove its directory
#   scripts/lab-ad.sh env <name>     print the env file path (fails when the lab is not up)
#   scripts/lab-ad.sh status <name>  running / stopped / absent (exit 0 only when serving LDAPS)
#   scripts/lab-ad.sh load <name> <ldif>  bulk-add an LDIF offline (DC stopped, one transaction)
#
# Each lab lives in ${GWB_LAB_ROOT:-/dev/shm/gwb-lab}/<name> and listens on its own loopback
# address (test → 127.0.0.10, demo → 127.0.0.11, others → a fixed 127.0.0.x derived from
# the name), so several labs can run at once. Realm LAB.EXAMPLE, domain LAB, DC dc1.
# The lab has its own CA; clients verify the DC's certificate against <dir>/tls/ca.pem.
#
# --exchange extends the schema with Exchange's recipient attributes (real OIDs and
# syntaxes, ms-Exch-Schema-Version-Pt with rangeUpper $GWB_LAB_EXCHANGE_SCHEMA_VERSION,
# default 17003 = Exchange 2019 CU10+) and creates an organisation without servers
# (CN=$GWB_LAB_EXCHANGE_ORGANIZATION, default LabOrg, objectVersion
# $GWB_LAB_EXCHANGE_ORGANIZATION_VERSION, default 16759), as /PrepareSchema and
# /PrepareAD leave a hybrid forest; --exchange-schema-only stops after the schema
# (/PrepareSchema alone). The env file says which: GWB_LAB_EXCHANGE=org|schema|none.
# A lab keeps the variant it was provisioned with; asking for another one is refused.
set -euo pipefail

# On tmpfs by default: on the VM's shared disk every DC write costs ~5 fdatasyncs, and
# while other jobs write to that disk an LDAP write took 25-45 ms (12-330 writes/s
# against 470-660 on tmpfs), so tests and benchmarks measured the disk's neighbours,
# not the DC or gwb. A lab is throwaway; a real DC's durability is not what is tested.
if [ -z "${GWB_LAB_ROOT:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    ROOT=/dev/shm/gwb-lab
else
    ROOT=${GWB_LAB_ROOT:-/tmp/gwb-lab}
fi
REALM=LAB.EXAMPLE
DOMAIN=LAB
HOST_NAME=dc1
DNS_NAME=dc1.lab.example
BASE_DN=DC=lab,DC=example
START_TIMEOUT=${GWB_LAB_START_TIMEOUT:-120}
PACKAGES=(samba samba-ad-dc samba-ad-provision ldb-tools ldap-utils openssl)

log() { printf 'lab-ad: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -eq 2 || ($# -eq 3 && ($1 == load || $1 == up)) ]] || usage
ACTION=$1
NAME=$2
LOAD_LDIF=
# The Exchange variant asked for: org (schema and organisation), schema, none.
EXCHANGE=none
if [[ $ACTION == load ]]; then
    LOAD_LDIF=$3
elif [[ $# -eq 3 ]]; then
    case $3 in
        --exchange) EXCHANGE=org ;;
        --exchange-schema-only) EXCHANGE=schema ;;
        *) usage ;;
    esac
fi
[[ $NAME =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] || die "lab name must match [a-z0-9][a-z0-9-]{0,30}: '$NAME'"

DIR=$ROOT/$NAME
ENV_FILE=$DIR/env
PID_FILE=$DIR/samba.pid
LOG_FILE=$DIR/samba.log
PASSWORD_FILE=$DIR/admin-password
TLS_DIR=$DIR/tls
CA_FILE=$TLS_DIR/ca.pem
MARKER=$DIR/provisioned
# The Exchange variant the lab was provisioned with, and its env lines.
EXCHANGE_FILE=$DIR/exchange
EXCHANGE_ENV=$DIR/exchange.env
SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
EXCHANGE_SCHEMA_VERSION=${GWB_LAB_EXCHANGE_SCHEMA_VERSION:-17003}
EXCHANGE_ORGANIZATION=${GWB_LAB_EXCHANGE_ORGANIZATION:-LabOrg}
EXCHANGE_ORGANIZATION_VERSION=${GWB_LAB_EXCHANGE_ORGANIZATION_VERSION:-16759}

lab_ip() {
    case $1 in
        test) echo 127.0.0.10 ;;
        demo) echo 127.0.0.11 ;;
        *)
            # cksum is in coreutils and stable across machines, so a name always maps
            # to the same address; 20..249 stays clear of the fixed ones above.
            local sum
            sum=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
            echo "127.0.0.$((20 + sum % 230))"
            ;;
    esac
}
IP=$(lab_ip "$NAME")

samba_pid() {
    [[ -s $PID_FILE ]] || return 1
    local pid
    pid=$(<"$PID_FILE")
    # After a reboot the number may belong to another process: it must be samba.
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == samba ]] && echo "$pid"
}

ldaps_answers() {
    [[ -s $PASSWORD_FILE && -s $CA_FILE ]] || return 1
    # A real authenticated bind with certificate verification, not just an open port.
    LDAPTLS_CACERT=$CA_FILE LDAPTLS_REQCERT=demand timeout 10 \
        ldapsearch -LLL -o nettimeout=5 -H "ldaps://$IP" -D "Administrator@$REALM" \
        -y "$PASSWORD_FILE" -b '' -s base defaultNamingContext >/dev/null 2>&1
}

with_lock() {
    mkdir -p "$ROOT"
    exec 9>"$ROOT/.$NAME.lock"
    flock -w 300 9 || die "another lab-ad.sh is busy with '$NAME' (lock $ROOT/.$NAME.lock)"
}

ensure_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] || die "missing packages ${missing[*]}; installing them needs root"
    log "installing ${missing[*]}"
    local started=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$ROOT/apt.log" 2>&1; then
        # The package lists may be missing or stale on a fresh machine.
        apt-get update >>"$ROOT/apt.log" 2>&1 || die "apt-get update failed (see $ROOT/apt.log)"
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$ROOT/apt.log" 2>&1 ||
            die "apt-get install ${missing[*]} failed (see $ROOT/apt.log)"
    fi
    log "packages installed in $((SECONDS - started))s"
}

ensure_address() {
    # Samba's "interfaces" only accepts addresses configured on an interface, and the
    # whole of 127/8 is merely routed to lo, so the lab's address is added explicitly.
    if ! ip -4 -o addr show dev lo | grep -q "inet $IP/"; then
        ip addr add "$IP/8" dev lo || die "cannot add $IP to lo (needs root / CAP_NET_ADMIN)"
    fi
}

check_address_free() {
    local other
    for other in "$ROOT"/*/ip; do
        [[ -e $other && $other != "$DIR/ip" ]] || continue
        if [[ $(<"$other") == "$IP" ]]; then
            local other_dir=${other%/ip}
            die "lab '${other_dir##*/}' already uses $IP; pick another name or run: $0 down ${other_dir##*/}"
        fi
    done
}

make_tls() {
    mkdir -p "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    (
        umask 077
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 \
            -keyout ca-key.pem -out ca.pem -subj "/O=gwb lab/CN=gwb lab $NAME CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -sha256 -keyout key.pem -out server.csr \
            -subj "/O=gwb lab/CN=$DNS_NAME" 2>/dev/null
        cat >server.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:$IP,DNS:$DNS_NAME
EOF
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 825 -sha256 -extfile server.ext -out cert.pem 2>/dev/null
        rm -f server.csr server.ext ca.srl
        # Samba refuses a private key readable by others.
        chmod 600 key.pem ca-key.pem
        chmod 644 ca.pem cert.pem
    ) || die "certificate generation failed"
}

random_password() {
    # Meets AD complexity (upper, lower, digit, symbol) whatever the random part holds,
    # and avoids characters that need quoting in shells or config files.
    local random
    random=$(openssl rand -base64 32 | tr -dc 'A-Za-z0-9' | head -c 24)
    printf 'Gwb-%s-9x' "$random"
}

extend_schema() {
    # Samba 4.17 provisions at most the 2012 R2 schema; msDS-ExternalDirectoryObjectId
    # arrived with 2016 (on the mailRecipient auxiliary class, hence on groups). Real
    # targets have it, so the lab adds just that attribute, exactly as the 2016 schema
    # defines it. GWB_LAB_PLAIN_SCHEMA=1 keeps the bare 2012 R2 schema instead.
    [[ ${GWB_LAB_PLAIN_SCHEMA:-0} == 1 ]] && return 0
    local schema_dn="CN=Schema,CN=Configuration,$BASE_DN"
    cat >"$DIR/schema-attribute.ldif" <<EOF
dn: CN=ms-DS-External-Directory-Object-Id,$schema_dn
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-DS-External-Directory-Object-Id
attributeID: 1.2.840.113556.1.4.2310
attributeSyntax: 2.5.5.12
isSingleValued: TRUE
rangeUpper: 256
showInAdvancedViewOnly: FALSE
adminDisplayName: ms-DS-External-Directory-Object-Id
adminDescription: ms-DS-External-Directory-Object-Id
oMSyntax: 64
searchFlags: 9
lDAPDisplayName: msDS-ExternalDirectoryObjectId
schemaIDGUID:: kL8pva1m4UCIexDfBwQZpg==
attributeSecurityGUID:: hri1d0qU0RGuvQAA+ANnwQ==
systemOnly: FALSE
systemFlags: 16
isMemberOfPartialAttributeSet: TRUE
EOF
    cat >"$DIR/schema-class.ldif" <<EOF
dn: CN=Mail-Recipient,$schema_dn
changetype: modify
add: mayContain
mayContain: msDS-ExternalDirectoryObjectId
EOF
    # Two runs: the class change only validates once a fresh process has loaded the
    # new attribute into its schema cache.
    local ldif
    for ldif in schema-attribute.ldif schema-class.ldif; do
        ldbmodify -H "$DIR/private/sam.ldb" --option="dsdb:schema update allowed=true" \
            "$DIR/$ldif" >>"$DIR/provision.log" 2>&1 ||
            die "schema extension $ldif failed; see $DIR/provision.log"
    done
}

exchange_ldif() {
    # Fills in an LDIF template of scripts/lab/ and applies it to the stopped DC's
    # database in a process of its own (a new schema object only validates in a
    # process that loaded it into its schema cache).
    local template=$SCRIPT_DIR/lab/$1 out=$DIR/$1
    [[ -r $template ]] || die "missing $template"
    sed -e "s|@SCHEMA_DN@|CN=Schema,CN=Configuration,$BASE_DN|g" \
        -e "s|@CONFIG_DN@|CN=Configuration,$BASE_DN|g" \
        -e "s|@SCHEMA_VERSION@|$EXCHANGE_SCHEMA_VERSION|g" \
        -e "s|@ORGANIZATION@|$EXCHANGE_ORGANIZATION|g" \
        -e "s|@ORGANIZATION_VERSION@|$EXCHANGE_ORGANIZATION_VERSION|g" \
        "$template" >"$out"
    ldbmodify -H "$DIR/private/sam.ldb" --option="dsdb:schema update allowed=true" \
        "$out" >>"$DIR/provision.log" 2>&1 ||
        die "Exchange $1 failed; last lines of $DIR/provision.log:
$(tail -n 20 "$DIR/provision.log")"
}

check_exchange_settings() {
    [[ $EXCHANGE_SCHEMA_VERSION =~ ^[1-9][0-9]{0,8}$ ]] ||
        die "GWB_LAB_EXCHANGE_SCHEMA_VERSION must be a positive number: '$EXCHANGE_SCHEMA_VERSION'"
    [[ $EXCHANGE_ORGANIZATION_VERSION =~ ^[1-9][0-9]{0,8}$ ]] ||
        die "GWB_LAB_EXCHANGE_ORGANIZATION_VERSION must be a positive number: '$EXCHANGE_ORGANIZATION_VERSION'"
    # Exchange allows letters, digits, spaces and hyphens in an organisation name.
    [[ $EXCHANGE_ORGANIZATION =~ ^[A-Za-z0-9][A-Za-z0-9\ -]{0,63}$ ]] ||
        die "GWB_LAB_EXCHANGE_ORGANIZATION must be letters, digits, spaces and hyphens: '$EXCHANGE_ORGANIZATION'"
}

extend_exchange() {
    # Exchange's /PrepareSchema, reduced to what gwb reads and writes (pass 1: the
    # attributes and the organisation class; pass 2: mailRecipient may contain them),
    # then /PrepareAD's organisation (pass 3) unless only the schema was asked for.
    echo "$EXCHANGE" >"$EXCHANGE_FILE"
    : >"$EXCHANGE_ENV"
    [[ $EXCHANGE == none ]] && return 0
    exchange_ldif exchange-schema.ldif
    exchange_ldif exchange-schema-classes.ldif
    echo "export GWB_LAB_EXCHANGE_SCHEMA_VERSION=$EXCHANGE_SCHEMA_VERSION" >>"$EXCHANGE_ENV"
    [[ $EXCHANGE == org ]] || return 0
    exchange_ldif exchange-organization.ldif
    printf "export GWB_LAB_EXCHANGE_ORGANIZATION='%s'\nexport GWB_LAB_EXCHANGE_ORGANIZATION_VERSION=%s\n" \
        "$EXCHANGE_ORGANIZATION" "$EXCHANGE_ORGANIZATION_VERSION" >>"$EXCHANGE_ENV"
}

provisioned_exchange() {
    # Labs provisioned before the Exchange variants existed have no record: plain.
    if [[ -s $EXCHANGE_FILE ]]; then cat "$EXCHANGE_FILE"; else echo none; fi
}

provision() {
    log "provisioning $REALM into $DIR ($IP, Exchange: $EXCHANGE)"
    local started=$SECONDS
    rm -rf "$DIR"
    mkdir -p "$DIR/run"
    # Readable so tests running as another user can source env and read the CA;
    # the secrets inside (password, keys, private/) are 0600/0700 themselves.
    chmod 755 "$DIR"
    echo "$IP" >"$DIR/ip"
    make_tls
    (umask 077 && random_password >"$PASSWORD_FILE")
    local password
    password=$(<"$PASSWORD_FILE")
    # Only the LDAP server runs: no SMB/NetBIOS/DNS/KDC/winbind, so labs never fight
    # over ports 53/88/445 and start in seconds. pid/socket dirs are per lab so two
    # labs do not collide on /run/samba.
    samba-tool domain provision \
        --realm="$REALM" --domain="$DOMAIN" --host-name="$HOST_NAME" \
        --server-role=dc --dns-backend=NONE \
        --adminpass="$password" --targetdir="$DIR" \
        --option="interfaces = $IP" \
        --option="bind interfaces only = yes" \
        --option="server services = ldap" \
        --option="pid directory = $DIR/run" \
        --option="ncalrpc dir = $DIR/run/ncalrpc" \
        --option="winbindd socket directory = $DIR/run/winbindd" \
        --option="ntp signd socket directory = $DIR/run/ntp_signd" \
        --option="tls enabled = yes" \
        --option="tls keyfile = $TLS_DIR/key.pem" \
        --option="tls certfile = $TLS_DIR/cert.pem" \
        --option="tls cafile = $CA_FILE" \
        >"$DIR/provision.log" 2>&1 ||
        die "samba-tool domain provision failed; last lines of $DIR/provision.log:
$(tail -n 20 "$DIR/provision.log")"
    extend_schema
    extend_exchange
    touch "$MARKER"
    log "provisioned in $((SECONDS - started))s"
}

start_samba() {
    log "starting samba on $IP"
    local started=$SECONDS
    # -F keeps samba in the foreground of its own session; "-i" would also work but
    # exits as soon as stdin reaches EOF, which is immediate for a background job.
    # fd 9 is closed for samba so it does not inherit (and hold forever) the lab lock.
    setsid samba -F --debug-stdout -M single -s "$DIR/etc/smb.conf" \
        </dev/null >>"$LOG_FILE" 2>&1 9>&- &
    echo $! >"$PID_FILE"
    until ldaps_answers; do
        if ! samba_pid >/dev/null; then
            die "samba exited during start-up; last lines of $LOG_FILE:
$(tail -n 30 "$LOG_FILE")"
        fi
        if ((SECONDS - started >= START_TIMEOUT)); then
            die "LDAPS on $IP:636 did not accept a bind within ${START_TIMEOUT}s; last lines of $LOG_FILE:
$(tail -n 30 "$LOG_FILE")"
        fi
        sleep 1
    done
    log "LDAPS answers after $((SECONDS - started))s"
}

write_env() {
    cat >"$ENV_FILE" <<EOF
export GWB_LAB_LDAP_URL=ldaps://$IP:636
export GWB_LAB_LDAP_CA_FILE=$CA_FILE
export GWB_LAB_LDAP_BIND_DN=CN=Administrator,CN=Users,$BASE_DN
export GWB_LAB_LDAP_PASSWORD_FILE=$PASSWORD_FILE
export GWB_LAB_BASE_DN=$BASE_DN
export GWB_LAB_DIR=$DIR
export GWB_LAB_EXCHANGE=$(provisioned_exchange)
EOF
    if [[ -s $EXCHANGE_ENV ]]; then cat "$EXCHANGE_ENV" >>"$ENV_FILE"; fi
    chmod 644 "$ENV_FILE"
}

stop_samba() {
    local pid
    pid=$(samba_pid) || return 0
    log "stopping samba (pid $pid)"
    # setsid made samba a process group leader; signal the group so its children go too.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= 30)); then
            log "samba did not stop within 30s; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            break
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

cmd_up() {
    with_lock
    local started=$SECONDS
    if [[ -e $MARKER ]]; then
        local have
        have=$(provisioned_exchange)
        [[ $have == "$EXCHANGE" ]] || die "lab '$NAME' was provisioned with Exchange variant '$have', not '$EXCHANGE' \
(org = --exchange, schema = --exchange-schema-only, none = no flag); run: $0 down $NAME"
    else
        check_exchange_settings
    fi
    if samba_pid >/dev/null && ldaps_answers; then
        log "lab '$NAME' already running on $IP; reusing it"
        write_env
        echo "$ENV_FILE"
        return 0
    fi
    ensure_packages
    check_address_free
    ensure_address
    stop_samba
    if [[ -e $MARKER ]]; then
        log "restarting the existing lab domain in $DIR"
    else
        provision
    fi
    start_samba
    write_env
    log "lab '$NAME' up in $((SECONDS - started))s; source $ENV_FILE"
    echo "$ENV_FILE"
}

cmd_down() {
    with_lock
    stop_samba
    if [[ -d $DIR ]]; then
        rm -rf "$DIR"
        log "removed $DIR"
    else
        log "lab '$NAME' is not present"
    fi
    if ip -4 -o addr show dev lo | grep -q "inet $IP/"; then
        ip addr del "$IP/8" dev lo 2>/dev/null || true
    fi
}

cmd_env() {
    samba_pid >/dev/null && [[ -s $ENV_FILE ]] || die "lab '$NAME' is not up; run: $0 up $NAME"
    echo "$ENV_FILE"
}

cmd_load() {
    # Bulk fixtures (e.g. 250,000 benchmark users): over LDAP Samba adds each object in
    # its own transaction and rewrites every large index list (objectClass, the parent's
    # one-level index, ...) per add, so it slows down as the directory grows (~40-70
    # users/s at 10,000). Offline, ldbadd loads the LDIF through the same samdb modules
    # (objectSid/RID allocation, defaults, security descriptors, replication metadata)
    # in ONE transaction; batch_mode drops the per-object sub-transactions (an error
    # aborts the whole load instead) and a bigger transaction index cache keeps index
    # lookups flat. --nosync skips per-commit fsyncs; the files are synced afterwards.
    [[ -r $LOAD_LDIF ]] || die "cannot read LDIF '$LOAD_LDIF'"
    with_lock
    [[ -e $MARKER ]] || die "lab '$NAME' is not provisioned; run: $0 up $NAME"
    local started=$SECONDS rc=0
    stop_samba
    log "loading $LOAD_LDIF into $DIR/private/sam.ldb (DC stopped)"
    ldbadd --nosync -o batch_mode:1 -o transaction_index_cache_size:${GWB_LAB_INDEX_CACHE:-1000003} \
        -H "$DIR/private/sam.ldb" "$LOAD_LDIF" >"$DIR/load.log" 2>&1 || rc=$?
    sync -f "$DIR/private/sam.ldb" 2>/dev/null || sync
    ensure_address
    start_samba
    write_env
    ((rc == 0)) || die "ldbadd failed (exit $rc; in batch mode a failed add aborts the whole load); last lines of $DIR/load.log:
$(tail -n 20 "$DIR/load.log")"
    log "$(tail -n1 "$DIR/load.log") in $((SECONDS - started))s (DC restart included)"
}

cmd_status() {
    local pid
    if pid=$(samba_pid); then
        if ldaps_answers; then
            echo "$NAME: running (pid $pid) ldaps://$IP:636 dir $DIR"
            return 0
        fi
        echo "$NAME: started but LDAPS not answering (pid $pid) ldaps://$IP:636 dir $DIR"
        return 1
    fi
    if [[ -d $DIR ]]; then
        echo "$NAME: stopped (dir $DIR; '$0 up $NAME' restarts it)"
    else
        echo "$NAME: absent"
    fi
    return 3
}

case $ACTION in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    load) cmd_load ;;
    *) usage ;;
esac
