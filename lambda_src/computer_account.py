"""Pre-create one node's computer object with a one-time password (issue 16).

The join function calls `create_computer` for a node of the cluster that asked during its join window. The
object goes into the cluster's computers OU, under the name derived from the instance id (never a name from the
request), with a fresh random password that the node then uses once (`adcli join --login-type=computer
--stdin-password`), which replaces it with a machine password at once. A node so holds a credential for its
own computer object and nothing else.

Channel: LDAP on the domain controller's port 389 with an NTLM bind that signs and SEALS the session (msldap,
pure Python). AD and Samba accept a password write (`unicodePwd`) only over an encrypted channel
(MS-ADTS 3.1.1.3.1.5.1); a session that does not report sealing is refused here before any password is sent,
also where the server would accept it in clear (Samba with `ldap server require strong auth = no`).

Security descriptor: the class's `defaultSecurityDescriptor` (read from the schema once per container) gives the
creator ("CO") read, delete, reset-password and write rights on the object: with it, the adding account would
own every node. So the object is added with an explicit descriptor: the default one WITHOUT its CO entries,
owner and group Domain Admins. Samba (Simple AD; proven in tests/adlab) accepts that owner from a non-admin
creator, and the creator keeps nothing. A Windows DC (AWS Managed Microsoft AD) may refuse an owner the creator
does not hold (MS-ADTS 3.1.1.5.2.1.1; KB5008383 tightened this for computer objects): then the add is retried
without an owner (the DC makes the creator the owner) and with an OWNER RIGHTS entry granting only READ_CONTROL,
which on Windows replaces the owner's implicit WRITE_DAC. That fallback is NOT proven here (no Windows DC):
docs/design.md says so.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# userAccountControl of a workstation's computer account.
UF_WORKSTATION_TRUST_ACCOUNT = 0x1000
# LDAP result codes that mean "the owner in the descriptor is not acceptable from this creator".
OWNER_REFUSED = ("constraintViolation", "insufficientAccessRights", "unwillingToPerform")
# OWNER RIGHTS (S-1-3-4) with only READ_CONTROL: the Windows fallback (see the module doc).
OWNER_RIGHTS_READ_ONLY = "(A;;0x20000;;;S-1-3-4)"  # winacl 0.1.9 does not know the alias OW
# BUILTIN aliases as full SIDs: winacl 0.1.9 makes AO and PO RIDs of the DOMAIN (S-1-5-21-...-548), which name no one.
BUILTIN_ALIASES = {"BA": "S-1-5-32-544", "BU": "S-1-5-32-545", "BG": "S-1-5-32-546", "AO": "S-1-5-32-548",
                   "SO": "S-1-5-32-549", "PO": "S-1-5-32-550", "BO": "S-1-5-32-551", "RE": "S-1-5-32-552",
                   "RU": "S-1-5-32-554"}
PASSWORD_LENGTH = 48
NAME = re.compile(r"[A-Z0-9][A-Z0-9-]{0,13}[A-Z0-9]|[A-Z0-9]")


# msldap logs whole requests at DEBUG, the add's unicodePwd included: pin its loggers (and its auth and socket
# layers') at INFO, so that a DEBUG root logger (AWS_LAMBDA_LOG_LEVEL) cannot turn that on.
for _name in ("msldap", "asyauth", "asysocks", "minikerberos"):
    if logging.getLogger(_name).level < logging.INFO:  # NOTSET (0) counts as below
        logging.getLogger(_name).setLevel(logging.INFO)


class ComputerAccountError(RuntimeError):
    """A failure whose message is safe to log (never a password)."""


class DirectoryUnavailable(ComputerAccountError):
    """No domain controller could be reached or bound: worth retrying later."""


class AlreadyExists(ComputerAccountError):
    """An object of that name exists: an instance gets one computer object, ever."""


@dataclass(frozen=True)
class Directory:
    dc_ips: Sequence[str]
    domain: str  # DNS name, e.g. test.domain
    computer_ou: str  # DN of the OU where node objects are created
    user: str  # the computer-adding account (sAMAccountName)
    password: str
    port: int = 389
    timeout: float = 5.0

    def __repr__(self) -> str:  # never the password, also not in a traceback's locals dump
        return f"Directory(dc_ips={list(self.dc_ips)!r}, domain={self.domain!r}, computer_ou={self.computer_ou!r})"


def one_time_password(length: int = PASSWORD_LENGTH, choice: Callable[[str], str] = secrets.choice) -> str:
    """Letters and digits only (no quoting anywhere on its way), every class present: the domain's complexity
    rule (3 of 4 classes) holds for any policy length up to `length`."""
    alphabet = string.ascii_letters + string.digits
    while True:
        pw = "".join(choice(alphabet) for _ in range(length))
        if any(c.islower() for c in pw) and any(c.isupper() for c in pw) and any(c.isdigit() for c in pw):
            return pw


def descriptor_sddl(default_sddl: str, *, owner_domain_admins: bool) -> str:
    """The object's descriptor: the class default without its creator-owner (CO) entries, rights as hex masks
    (winacl parses only those). Owner and group Domain Admins, or (Windows fallback) no owner and an OWNER
    RIGHTS entry with read-control only."""
    from winacl.dtyp.ace import well_known_accessmasks

    dacl = default_sddl[default_sddl.index("D:") + 2:]
    sacl = re.search(r"\)S:|^S:", dacl)  # a SACL part after the DACL is not the DACL's
    if sacl:
        dacl = dacl[:sacl.start() + (1 if dacl[sacl.start()] == ")" else 0)]
    flags = dacl[:dacl.index("(")] if "(" in dacl else ""
    aces = re.findall(r"\(([^()]*)\)", dacl)
    kept = []
    for ace in aces:
        fields = ace.split(";")
        if len(fields) != 6:
            raise ComputerAccountError(f"unexpected ACE in the schema's defaultSecurityDescriptor: ({ace})")
        if fields[5].upper() == "CO":
            continue  # what the creator would keep
        rights = fields[2]
        if not rights.lower().startswith("0x"):
            tokens = [rights[i:i + 2] for i in range(0, len(rights), 2)]
            unknown = [t for t in tokens if t not in well_known_accessmasks]
            if unknown:
                raise ComputerAccountError(f"unknown access right(s) {unknown} in the schema's default descriptor")
            fields[2] = hex(sum(well_known_accessmasks[t] for t in tokens))
        fields[5] = BUILTIN_ALIASES.get(fields[5].upper(), fields[5])
        kept.append("(" + ";".join(fields) + ")")
    if owner_domain_admins:
        return "O:DAG:DAD:" + flags + "".join(kept)
    return "G:DAD:" + flags + "".join(kept) + OWNER_RIGHTS_READ_ONLY


# Per container: the domain's SID and the class default descriptor never change while it lives.
_schema_cache: dict[str, tuple[str, str]] = {}


async def _first(conn: Any, base: str, attrs: list[str], flt: str = "(objectClass=*)", scope: int = 0) -> dict:
    async for entry, err in conn.search(base, flt, [a.encode() for a in attrs], search_scope=scope):
        if err is not None:
            raise ComputerAccountError(f"LDAP search of {base}: {type(err).__name__} {_result_code(err)}".strip())
        return entry.get("attributes") or {}
    return {}


async def _bounded(awaitable: Any, directory: Directory, what: str) -> Any:
    """Every LDAP round trip within the directory's timeout: the whole creation stays well inside the function's
    own timeout, which stays inside the node's request timeout (a node must never give up on a request whose
    object then exists: it could not get its password again)."""
    try:
        return await asyncio.wait_for(awaitable, directory.timeout)
    except TimeoutError:
        raise DirectoryUnavailable(f"the domain controller did not answer the {what} within {directory.timeout}s")\
            from None


async def _connect(directory: Directory) -> Any:
    from asyauth.common.constants import asyauthSecret
    from asyauth.common.credentials.ntlm import NTLMCredential
    from msldap.commons.target import MSLDAPTarget
    from msldap.connection import MSLDAPClientConnection

    errors = []
    for ip in directory.dc_ips:
        target = MSLDAPTarget(ip, directory.port, domain=directory.domain.upper(), timeout=directory.timeout)
        cred = NTLMCredential(directory.password, directory.user, directory.domain, asyauthSecret.PASSWORD)
        conn = MSLDAPClientConnection(target, cred)
        try:
            ok, err = await asyncio.wait_for(conn.connect(), directory.timeout)
            if ok:
                ok, err = await asyncio.wait_for(conn.bind(), directory.timeout)
        except (TimeoutError, OSError) as exc:
            ok, err = False, exc
        if ok:
            if not conn.auth.encryption_needed():
                await conn.disconnect()
                raise ComputerAccountError(f"{ip}: the LDAP session is not sealed: no password is sent over it")
            return conn
        await conn.disconnect()
        # Only the result's class and code: an exception text could in theory quote the request.
        errors.append(f"{ip}: {type(err).__name__} {_result_code(err)}".strip())
    raise DirectoryUnavailable("no domain controller accepted the sealed LDAP bind: " + "; ".join(errors))


async def _schema(conn: Any, directory: Directory) -> tuple[str, str]:
    if directory.domain not in _schema_cache:
        base = ",".join(f"DC={p}" for p in directory.domain.split("."))
        sid = (await _bounded(_first(conn, base, ["objectSid"]), directory, "domain search")).get("objectSid")
        root = await _bounded(_first(conn, "", ["schemaNamingContext"]), directory, "rootDSE search")
        schema_nc = root.get("schemaNamingContext") or f"CN=Schema,CN=Configuration,{base}"
        default = (await _bounded(_first(conn, f"CN=Computer,{schema_nc}", ["defaultSecurityDescriptor"]),
                                  directory, "schema search")).get("defaultSecurityDescriptor")
        if not sid or not default:
            raise ComputerAccountError("cannot read the domain SID or the computer class's defaultSecurityDescriptor")
        _schema_cache[directory.domain] = (str(sid), str(default))
    return _schema_cache[directory.domain]


def _result_code(err: Any) -> str:
    return str(getattr(err, "resultname", "") or "")


async def _create(directory: Directory, name: str, host_fqdn: str, password: str) -> str:
    from winacl.dtyp.security_descriptor import SECURITY_DESCRIPTOR

    conn = await _connect(directory)
    try:
        domain_sid, default_sddl = await _schema(conn, directory)
        dn = f"CN={name},{directory.computer_ou}"
        attrs = {
            "objectClass": ["top", "person", "organizationalPerson", "user", "computer"],
            "sAMAccountName": name + "$",
            "userAccountControl": UF_WORKSTATION_TRUST_ACCOUNT,
            "dNSHostName": host_fqdn,
            "unicodePwd": f'"{password}"',
        }
        for owner_domain_admins in (True, False):
            sd = SECURITY_DESCRIPTOR.from_sddl(descriptor_sddl(default_sddl, owner_domain_admins=owner_domain_admins),
                                               domain_sid=domain_sid)
            ok, err = await _bounded(conn.add(dn, {**attrs, "nTSecurityDescriptor": sd.to_bytes()}), directory,
                                     "add")
            if ok:
                return dn
            code = _result_code(err)
            if code == "entryAlreadyExists":
                raise AlreadyExists(f"{dn} exists already: one computer object per instance")
            if not (owner_domain_admins and code in OWNER_REFUSED):
                break
        raise ComputerAccountError(f"cannot create {dn}: {code or type(err).__name__}")
    finally:
        await conn.disconnect()


def create_computer(directory: Directory, name: str, host_fqdn: str,
                    password_factory: Callable[[], str] = one_time_password) -> tuple[str, str]:
    """Create the computer object `name` (15 characters at most, upper case) in the directory's computers OU with
    a fresh one-time password; return (its DN, the password). Raises AlreadyExists, DirectoryUnavailable or
    ComputerAccountError."""
    if not NAME.fullmatch(name):
        raise ComputerAccountError(f"not a computer name: {name!r}")
    password = password_factory()
    # A loop of its own, never installed as the thread's current loop: asyncio.run would leave the thread without
    # one (set_event_loop(None)), which breaks any caller that uses the current loop afterwards.
    loop = asyncio.new_event_loop()
    try:
        dn = loop.run_until_complete(_create(directory, name, host_fqdn, password))
    finally:
        loop.close()
    return dn, password
