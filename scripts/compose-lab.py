#!/usr/bin/env python3
"""The compose lab's tenant and its check against AD, for scripts/compose-test.sh.

    compose-lab.py seed STATE USERS GROUPS    AD users in the DC (over LDAPS), the same
                                              users (synced, their real SIDs) and groups
                                              in graph-sim; STATE keeps the ids
    compose-lab.py stream STATE SECONDS RATE  a steady change stream: member adds and
                                              removes, new groups; every change is logged
    compose-lab.py verify STATE TIMEOUT       until AD equals the tenant or TIMEOUT s:
                                              prints missing / extra / duplicate groups
                                              and member differences; exit 1 on timeout
    compose-lab.py probe STATE TIMEOUT        one change, then the seconds until AD has it
    compose-lab.py snapshot STATE FILE        the tenant's groups and AD's uSNChanged per group
    compose-lab.py restore STATE              puts the snapshot's tenant into a new graph-sim
    compose-lab.py rewritten STATE FILE       exit 1 if any AD group changed since the snapshot

graph-sim is reached on $GWB_GRAPH_SIM_URL (the lab publishes it on loopback); the DC
is read and written with ldapsearch/ldapadd inside the samba-dc container, over LDAPS
with certificate verification (`docker-compose exec -T samba-dc ...`).
"""

import base64
import json
import os
import random
import struct
import subprocess
import sys
import time
import urllib.request
import uuid

SIM = os.environ.get("GWB_GRAPH_SIM_URL", "http://127.0.0.1:38600")
BASE_DN = "DC=lab,DC=example"
USERS_OU = f"OU=Lab Users,{BASE_DN}"
GROUPS_OU = f"OU=Cloud Groups,{BASE_DN}"
LDAP_ENV = (
    "LDAPTLS_CACERT=/var/lib/gwb-lab-dc/tls/ca.pem LDAPTLS_REQCERT=demand "
)
LDAP_ARGS = "-H ldaps://samba-dc -D Administrator@LAB.EXAMPLE -y /var/lib/gwb-lab-dc/admin-password"


def dc(command, stdin=None):
    """Runs a shell command in the samba-dc container; returns stdout."""
    out = subprocess.run(
        ["docker-compose", "exec", "-T", "samba-dc", "sh", "-c", command],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"samba-dc: {command}: {out.stderr.strip()}")
    return out.stdout


def ldapsearch(base, filt, attrs):
    text = dc(f"{LDAP_ENV} ldapsearch -LLL -o ldif-wrap=no {LDAP_ARGS} -b '{base}' '{filt}' {' '.join(attrs)}")
    entries, entry = [], None
    for line in text.splitlines():
        if not line.strip():
            entry = None
            continue
        name, _, value = line.partition(":")
        if value.startswith(":"):
            value = base64.b64decode(value[1:].strip())
        else:
            value = value.strip()
        if name == "dn":
            entry = {"dn": [value]}
            entries.append(entry)
        elif entry is not None:
            entry.setdefault(name.lower(), []).append(value)
    return entries


def sid_string(raw):
    revision, count = raw[0], raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack("<" + "I" * count, raw[8 : 8 + 4 * count])
    return "S-{}-{}".format(revision, authority) + "".join(f"-{s}" for s in subs)


def sim(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(SIM + path, data=data, method=method, headers={"content-type": "application/json"})
    for attempt in range(30):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError:
            raise
        except OSError:
            # graph-sim restarting (compose down/up): retry
            if attempt == 29:
                raise
            time.sleep(1)


def load(path):
    with open(path) as f:
        return json.load(f)


def save(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def seed(path, users, groups):
    rng = random.Random(17)
    ldif = [f"dn: {USERS_OU}\nobjectClass: organizationalUnit\nou: Lab Users\n"]
    for i in range(users):
        name = f"Lab User {i:04d}"
        ldif.append(
            f"dn: CN={name},{USERS_OU}\nobjectClass: user\ncn: {name}\n"
            f"sAMAccountName: labuser{i:04d}\nuserAccountControl: 514\n"
        )
    dc(f"{LDAP_ENV} ldapadd -c {LDAP_ARGS} >/dev/null", stdin="\n".join(ldif))
    found = {e["dn"][0].lower(): sid_string(e["objectsid"][0]) for e in ldapsearch(USERS_OU, "(objectClass=user)", ["objectSid"])}
    state = {"users": {}, "sids": {}, "groups": []}
    seed_users = []
    for i in range(users):
        name = f"Lab User {i:04d}"
        dn = f"CN={name},{USERS_OU}"
        user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        state["users"][user_id] = dn
        state["sids"][user_id] = found[dn.lower()]
        seed_users.append(
            {
                "id": user_id,
                "displayName": name,
                "userPrincipalName": f"labuser{i:04d}@lab.example",
                "onPremisesSecurityIdentifier": found[dn.lower()],
                "onPremisesSyncEnabled": True,
                "onPremisesDistinguishedName": dn,
            }
        )
    user_ids = list(state["users"])
    seed_groups = []
    for g in range(groups):
        group_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        state["groups"].append(group_id)
        seed_groups.append(
            {
                "id": group_id,
                "displayName": f"Lab Group {g:04d}",
                "mailEnabled": False,
                "securityEnabled": True,
                "groupTypes": [],
                "members": rng.sample(user_ids, rng.randint(1, min(8, len(user_ids)))),
            }
        )
    sim("POST", "/admin/seed", {"users": seed_users, "groups": seed_groups})
    save(path, state)
    print(f"seeded {users} AD users (synced in the tenant) and {groups} groups")


def stream(path, seconds, rate):
    """Steady changes for SECONDS at RATE changes/s; new groups are added to STATE."""
    state = load(path)
    rng = random.Random()
    user_ids = list(state["users"])
    deadline = time.monotonic() + seconds
    changes = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        kind = rng.random()
        if kind < 0.1:
            group_id = str(uuid.uuid4())
            sim(
                "POST",
                "/admin/groups",
                {
                    "id": group_id,
                    "displayName": f"Stream Group {group_id[:8]}",
                    "mailEnabled": False,
                    "securityEnabled": True,
                    "groupTypes": [],
                    "members": rng.sample(user_ids, 3),
                },
            )
            state["groups"].append(group_id)
            save(path, state)
        else:
            # groups[0] is the probe's (see probe): the stream leaves it alone.
            group_id = rng.choice(state["groups"][1:])
            user = rng.choice(user_ids)
            if kind < 0.6:
                sim("POST", f"/admin/groups/{group_id}/members", {"ids": [user]})
            else:
                sim("POST", f"/admin/groups/{group_id}/members/remove", {"ids": [user]})
        changes += 1
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
    print(f"stream: {changes} changes in {seconds}s")


def expected(state):
    groups = {}
    for group_id in state["groups"]:
        group = sim("GET", f"/admin/groups/{group_id}?includeMembers=true")
        if group.get("state", "active") != "active":
            continue
        members = {state["users"][m["id"]].lower() for m in group.get("members", []) if m["id"] in state["users"]}
        groups[group_id.lower()] = (group["displayName"], members)
    return groups


def actual():
    groups = {}
    for entry in ldapsearch(GROUPS_OU, "(objectClass=group)", ["cn", "adminDescription", "member"]):
        anchor = entry.get("admindescription", [""])[0]
        group_id = anchor[len("Group_") :].lower() if anchor.startswith("Group_") else entry["dn"][0]
        members = {m.lower() for m in entry.get("member", [])}
        groups.setdefault(group_id, []).append((entry["cn"][0], members))
    return groups


def compare(state):
    want, have = expected(state), actual()
    missing = [g for g in want if g not in have]
    extra = [g for g in have if g not in want]
    duplicates = [g for g, copies in have.items() if len(copies) > 1]
    members = 0
    names = 0
    for group_id, (name, wanted) in want.items():
        for cn, got in have.get(group_id, []):
            members += len(wanted ^ got)
            # The planner may suffix a CN to keep it unique (`<name>_<id tail>`).
            names += not (cn == name or cn.startswith(name + "_"))
    return {
        "groups": len(want),
        "missing": len(missing),
        "extra": len(extra),
        "duplicates": len(duplicates),
        "member_differences": members,
        "name_differences": names,
    }


def verify(path, timeout):
    state = load(path)
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while True:
        try:
            result = compare(state)
        except (RuntimeError, OSError) as e:
            result = {"error": str(e)[:200]}
        ok = result.get("groups") and not any(result.get(k) for k in ("missing", "extra", "duplicates", "member_differences", "name_differences"))
        if ok or time.monotonic() > deadline:
            result["seconds"] = round(time.monotonic() - started, 1)
            print(json.dumps(result))
            return 0 if ok else 1
        time.sleep(2)


def probe(path, timeout):
    """One membership change; the seconds until AD shows it."""
    state = load(path)
    group_id = state["groups"][0]
    group = sim("GET", f"/admin/groups/{group_id}?includeMembers=true")
    current = {m["id"] for m in group.get("members", [])}
    user = next(u for u in state["users"] if u not in current)
    started = time.monotonic()
    sim("POST", f"/admin/groups/{group_id}/members", {"ids": [user]})
    dn = state["users"][user].lower()
    while time.monotonic() - started < timeout:
        try:
            entries = ldapsearch(GROUPS_OU, f"(adminDescription=Group_{group_id})", ["member"])
            if any(dn in {m.lower() for m in e.get("member", [])} for e in entries):
                print(round(time.monotonic() - started, 1))
                return 0
        except RuntimeError:
            pass
        time.sleep(0.5)
    print(f"timeout after {timeout}s")
    return 1


def snapshot(path, out):
    state = load(path)
    tenant = []
    for group_id in state["groups"]:
        group = sim("GET", f"/admin/groups/{group_id}?includeMembers=true")
        tenant.append({"id": group_id, "displayName": group["displayName"], "members": [m["id"] for m in group.get("members", [])]})
    usn = {
        e["dn"][0].lower(): e["usnchanged"][0]
        for e in ldapsearch(GROUPS_OU, "(objectClass=group)", ["uSNChanged"])
    }
    state["snapshot"] = tenant
    save(path, state)
    with open(out, "w") as f:
        json.dump(usn, f)
    print(f"snapshot: {len(tenant)} groups, {len(usn)} in AD")


def restore(path):
    state = load(path)
    users = [
        {
            "id": user_id,
            "displayName": dn.split(",")[0][3:],
            "userPrincipalName": dn.split(",")[0][3:].replace(" ", ".").lower() + "@lab.example",
            "onPremisesSecurityIdentifier": state["sids"][user_id],
            "onPremisesSyncEnabled": True,
            "onPremisesDistinguishedName": dn,
        }
        for user_id, dn in state["users"].items()
    ]
    groups = [
        {**g, "mailEnabled": False, "securityEnabled": True, "groupTypes": []} for g in state["snapshot"]
    ]
    sim("POST", "/admin/seed", {"users": users, "groups": groups})
    print(f"restored {len(users)} users and {len(groups)} groups into graph-sim")


def rewritten(path, before_file):
    with open(before_file) as f:
        before = json.load(f)
    after = {
        e["dn"][0].lower(): e["usnchanged"][0]
        for e in ldapsearch(GROUPS_OU, "(objectClass=group)", ["uSNChanged"])
    }
    changed = [dn for dn, usn in after.items() if before.get(dn) != usn]
    print(json.dumps({"groups": len(after), "rewritten": len(changed), "examples": changed[:3]}))
    return 1 if changed else 0


def main():
    command, path = sys.argv[1], sys.argv[2]
    if command == "seed":
        seed(path, int(sys.argv[3]), int(sys.argv[4]))
    elif command == "stream":
        stream(path, float(sys.argv[3]), float(sys.argv[4]))
    elif command == "verify":
        return verify(path, float(sys.argv[3]))
    elif command == "probe":
        return probe(path, float(sys.argv[3]))
    elif command == "snapshot":
        snapshot(path, sys.argv[3])
    elif command == "restore":
        restore(path)
    elif command == "rewritten":
        return rewritten(path, sys.argv[3])
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
