#!/usr/bin/env bash
# Provisions the lab domain on first start, then runs samba in the foreground.
# Same choices as scripts/lab-ad.sh (see the comments there); differences: the DC
# listens on the container's interfaces, its certificate names the compose service
# (samba-dc). Provisioning stores NT ACLs in security.* xattrs, which needs
# CAP_SYS_ADMIN: docker-compose.yml grants it to this container only.
set -euo pipefail

REALM=LAB.EXAMPLE
DOMAIN=LAB
HOST_NAME=dc1
BASE_DN=DC=lab,DC=example
DIR=/var/lib/gwb-lab-dc
EXPORT=/export
TLS_DIR=$DIR/tls
# The uid gwb runs as in the service images (deploy/Dockerfile): the writer must
# own the exported password file, which it refuses when group/world-readable.
GWB_UID=${GWB_UID:-10001}
SERVICE_NAME=${SAMBA_SERVICE_NAME:-samba-dc}

log() { printf 'samba-dc: %s\n' "$*" >&2; }

make_tls() {
    mkdir -p "$TLS_DIR"
    (
        umask 077
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 825 \
            -keyout ca-key.pem -out ca.pem -subj "/O=gwb lab/CN=gwb lab compose CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -sha256 -keyout key.pem -out server.csr \
            -subj "/O=gwb lab/CN=$SERVICE_NAME" 2>/dev/null
        # DNS:$HOST_NAME too: libldap checks ldaps://localhost against the local host name.
        cat >server.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$SERVICE_NAME,DNS:$HOST_NAME,DNS:$HOST_NAME.lab.example,DNS:localhost,IP:127.0.0.1
EXT
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 825 -sha256 -extfile server.ext -out cert.pem 2>/dev/null
        rm -f server.csr server.ext ca.srl
        chmod 600 key.pem ca-key.pem
        chmod 644 ca.pem cert.pem
    )
}

random_password() {
    local random
    random=$(openssl rand -base64 32 | tr -dc 'A-Za-z0-9' | head -c 24)
    printf 'Gwb-%s-9x' "$random"
}

extend_schema() {
    local schema_dn="CN=Schema,CN=Configuration,$BASE_DN"
    cat >"$DIR/schema-attribute.ldif" <<LDIF
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
LDIF
    cat >"$DIR/schema-class.ldif" <<LDIF
dn: CN=Mail-Recipient,$schema_dn
changetype: modify
add: mayContain
mayContain: msDS-ExternalDirectoryObjectId
LDIF
    local ldif
    for ldif in schema-attribute.ldif schema-class.ldif; do
        ldbmodify -H "$DIR/private/sam.ldb" --option="dsdb:schema update allowed=true" "$DIR/$ldif"
    done
}

add_target_ou() {
    printf 'dn: OU=Cloud Groups,%s\nobjectClass: organizationalUnit\nou: Cloud Groups\n' "$BASE_DN" \
        | ldbadd -H "$DIR/private/sam.ldb"
}

provision() {
    log "provisioning $REALM in $DIR"
    mkdir -p "$DIR/run"
    make_tls
    (umask 077 && random_password >"$DIR/admin-password")
    samba-tool domain provision \
        --realm="$REALM" --domain="$DOMAIN" --host-name="$HOST_NAME" \
        --server-role=dc --dns-backend=NONE \
        --adminpass="$(<"$DIR/admin-password")" --targetdir="$DIR" \
        --option="server services = ldap" \
        --option="pid directory = $DIR/run" \
        --option="ncalrpc dir = $DIR/run/ncalrpc" \
        --option="winbindd socket directory = $DIR/run/winbindd" \
        --option="ntp signd socket directory = $DIR/run/ntp_signd" \
        --option="tls enabled = yes" \
        --option="tls keyfile = $TLS_DIR/key.pem" \
        --option="tls certfile = $TLS_DIR/cert.pem" \
        --option="tls cafile = $TLS_DIR/ca.pem"
    extend_schema
    add_target_ou
    touch "$DIR/provisioned"
}

[[ -e $DIR/provisioned ]] || provision

# Export for gwb-writer (lab-ad volume): the CA it trusts and the bind password,
# owned by the gwb uid with mode 0600 as the writer demands of secret files.
install -m 644 "$TLS_DIR/ca.pem" "$EXPORT/ca.pem"
install -m 600 -o "$GWB_UID" -g "$GWB_UID" "$DIR/admin-password" "$EXPORT/admin-password"

log "starting samba"
exec samba -F --debug-stdout -M single -s "$DIR/etc/smb.conf"
