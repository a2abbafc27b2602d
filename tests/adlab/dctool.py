"""Directory population helper, run by the system python3 (samba bindings) INSIDE the lab DC.

Usage: /usr/bin/python3 dctool.py SPEC.json|-   (prints one JSON line with timings)

SPEC: {"users": [{"name", "password"}], "groups": [{"name", "members": [...]}],
       "machine_account_quota": int, "delegate_join": {"user": NAME, "container": "CN=Computers"},
       "delegate_add": {"user": NAME, "ou": "OU=Computers,OU=pcluster-ad-<stack>"},
       "bulk": {"users": N, "prefix": "buser", "big_group": {"name", "members": M},
                "many_groups": {"user": NAME, "count": K, "prefix": "mgrp"}}}
Bulk users get no password (lookups only): that skips Kerberos key derivation, which is what
makes 10,000 users take minutes instead of seconds.
"""

import json
import sys
import time

import ldb
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB
from samba.sd_utils import SDUtils

COMPUTER_CLASS = "bf967a86-0de6-11d0-a285-00aa003049e2"  # schemaIDGUID of the computer class


def _exists(samdb, dn):
    try:
        samdb.search(dn, scope=ldb.SCOPE_BASE, attrs=[])
        return True
    except ldb.LdbError:
        return False


def main():
    spec = json.load(sys.stdin if sys.argv[1] == "-" else open(sys.argv[1]))
    lp = LoadParm()
    lp.load_default()
    samdb = SamDB(url=lp.samdb_url(), session_info=system_session(), lp=lp)
    base = str(samdb.domain_dn())
    users_dn = f"CN=Users,{base}"
    out = {}
    t0 = time.monotonic()

    if "machine_account_quota" in spec:
        m = ldb.Message()
        m.dn = ldb.Dn(samdb, base)
        m["ms-DS-MachineAccountQuota"] = ldb.MessageElement(
            str(spec["machine_account_quota"]), ldb.FLAG_MOD_REPLACE, "ms-DS-MachineAccountQuota"
        )
        samdb.modify(m)

    for u in spec.get("users", []):
        samdb.newuser(u["name"], u["password"], givenname=u.get("given"), surname=u.get("surname"))

    delegate = spec.get("delegate_join")
    if delegate:
        # Least privilege for joins: the user may create/delete computer objects in the container
        # and fully manage the computer objects in it (the usual "join account" delegation).
        res = samdb.search(
            base, expression=f"(sAMAccountName={ldb.binary_encode(delegate['user'])})", attrs=["objectSid"]
        )
        sid = str(ndr_unpack(security.dom_sid, res[0]["objectSid"][0]))
        container = f"{delegate.get('container', 'CN=Computers')},{base}"
        for ace in (f"(OA;CI;CCDC;{COMPUTER_CLASS};;{sid})", f"(OA;CIIO;GA;;{COMPUTER_CLASS};{sid})"):
            SDUtils(samdb).dacl_add_ace(container, ace)
    adding = spec.get("delegate_add")
    if adding:
        # The product's computer-adding account (issue 16): the stack's OU chain, and ONE right on its
        # Computers OU: create computer objects (not inherited, no delete, no rights on the objects).
        res = samdb.search(
            base, expression=f"(sAMAccountName={ldb.binary_encode(adding['user'])})", attrs=["objectSid"]
        )
        sid = str(ndr_unpack(security.dom_sid, res[0]["objectSid"][0]))
        parts = adding["ou"].split(",")
        for i in range(len(parts) - 1, -1, -1):
            dn = ",".join(parts[i:]) + "," + base
            if not _exists(samdb, dn):
                samdb.create_ou(dn)
        SDUtils(samdb).dacl_add_ace(f"{adding['ou']},{base}", f"(OA;;CC;{COMPUTER_CLASS};;{sid})")
    for g in spec.get("groups", []):
        samdb.newgroup(g["name"])
        if g.get("members"):
            samdb.add_remove_group_members(g["name"], g["members"], add_members_operation=True)
    out["small_s"] = round(time.monotonic() - t0, 2)

    bulk = spec.get("bulk")
    if bulk:
        t1 = time.monotonic()
        prefix = bulk.get("prefix", "buser")
        n = int(bulk["users"])
        chunk = int(bulk.get("chunk", 500))  # one huge transaction gets slower per entry as it grows
        samdb.transaction_start()
        try:
            for i in range(n):
                if i and i % chunk == 0:
                    samdb.transaction_commit()
                    samdb.transaction_start()
                name = f"{prefix}{i:05d}"
                samdb.add(
                    {
                        "dn": f"CN={name},{users_dn}",
                        "objectClass": "user",
                        "sAMAccountName": name,
                        "userPrincipalName": f"{name}@{spec['realm']}",
                        "givenName": "Bulk",
                        "sn": name,
                        "userAccountControl": "544",  # NORMAL_ACCOUNT | PASSWD_NOTREQD
                    }
                )
            samdb.transaction_commit()
        except Exception:
            samdb.transaction_cancel()
            raise
        out["bulk_users_s"] = round(time.monotonic() - t1, 2)

        big = bulk.get("big_group")
        if big:
            t2 = time.monotonic()
            members = [f"CN={prefix}{i:05d},{users_dn}" for i in range(min(int(big["members"]), n))]
            samdb.add(
                {
                    "dn": f"CN={big['name']},{users_dn}",
                    "objectClass": "group",
                    "sAMAccountName": big["name"],
                    "member": members,
                }
            )
            out["big_group_s"] = round(time.monotonic() - t2, 2)

        many = bulk.get("many_groups")
        if many:
            t3 = time.monotonic()
            res = samdb.search(base, expression=f"(sAMAccountName={ldb.binary_encode(many['user'])})", attrs=["dn"])
            user_dn = str(res[0].dn)
            samdb.transaction_start()
            try:
                for k in range(int(many["count"])):
                    gname = f"{many.get('prefix', 'mgrp')}{k:04d}"
                    samdb.add(
                        {
                            "dn": f"CN={gname},{users_dn}",
                            "objectClass": "group",
                            "sAMAccountName": gname,
                            "member": [user_dn],
                        }
                    )
                samdb.transaction_commit()
            except Exception:
                samdb.transaction_cancel()
                raise
            out["many_groups_s"] = round(time.monotonic() - t3, 2)

    out["total_s"] = round(time.monotonic() - t0, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
