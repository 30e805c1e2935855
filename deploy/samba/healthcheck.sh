#!/usr/bin/env bash
# Healthy once LDAPS accepts an authenticated bind with certificate verification.
set -euo pipefail
DIR=/var/lib/gwb-lab-dc
LDAPTLS_CACERT=$DIR/tls/ca.pem LDAPTLS_REQCERT=demand \
    ldapsearch -LLL -o nettimeout=5 -H ldaps://localhost -D 'Administrator@LAB.EXAMPLE' \
    -y "$DIR/admin-password" -b '' -s base defaultNamingContext >/dev/null
