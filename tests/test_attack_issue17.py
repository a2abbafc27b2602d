"""Attack review of issue 17's changes (DirectoryAdmin's DNS egress, the Resolver rule of adopted VPCs, the
directory id in every Invocation input, replication retries, case-only renames, the owner token), as: an AD user
or job on a node, root on a compute node, someone with the node role's credentials, and an operator's mistake in
the stack config.

Attacks the code refuses today are plain tests (they must keep passing). Findings are
``xfail(strict=True, reason="attack finding N: ...")``: they fail today, and the fix flips them (then drop the
marker). The lab side (real Samba DC) is tests/adlab/test_attack_issue17.py."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer

import boto3
import pytest
from pulumi import RunError

from pcluster_ad.lambda_src import directory_admin as da
from pcluster_ad.stack_config import ConfigError
from pcluster_ad.tools.mocks import PlanMocks
from tests.test_directory_admin import AnySecureString, NumbersStub

ENV = {"DIRECTORY_ID": "d-1234567890", "DOMAIN": "test.domain", "DNS_IPS": "10.0.0.10,10.0.1.10",
       "OU_NAME": "pcluster-ad-dev", "ADMIN_USER": "Administrator", "ADMIN_PASSWORD_PARAMETER": "/pcluster-ad/dev/a",
       "CLUSTER_NAME": "hpc", "COMPUTER_PREFIX": da.computer_prefix("hpc"), "STACK": "dev",
       "KMS_KEY_ARN": "arn:aws:kms:eu-west-1:123456789012:key/k", "DEPLOYMENT_ID": "0123456789abcdef"}
PEOPLE = "OU=Users,OU=pcluster-ad-dev,DC=test,DC=domain"
ADMIN_SECRET = "Adm1n-Secret-Passw0rd!"
DC_IPS = ["10.0.0.10", "10.0.1.10"]


def existing_directory(dns_ips: list[str], domain: str = "test.domain"):
    """An Existing directory the stack administers (adminUser): DirectoryAdmin simple-binds to each dnsIps entry."""
    def edit(c):
        c["pcluster-ad:directory"] = {"type": "Existing", "domainName": domain, "shortName": "TEST",
                                      "dnsIps": dns_ips, "directoryId": "d-1234567890",
                                      "adminUser": "Administrator", "parentOu": "DC=test,DC=domain"}
        c["pcluster-ad:join"] = {"user": "pcad-add-dev"}
    return edit


# -- a directory on a dict, with the LDAP primitives Directory's real logic calls ---------------------------------

class DictDirectory(NumbersStub, da.Directory):
    """Directory's real upsert/delete/_owned/owner logic on a dict of entries {dn: {attr: [values]}}; lookups by
    sAMAccountName without case (as AD). Records every write."""

    def __init__(self, entries: dict[str, dict]):
        super().__init__(None, da.Layout("test.domain", "pcluster-ad-dev"), self._set_pw,
                         da.ReplicationWait(sleep=lambda s: None))
        self.entries = entries
        self.writes: list[tuple] = []

    def _set_pw(self, name, password):
        self.writes.append(("password", name))

    def find_account(self, sam, object_class):
        for dn, e in self.entries.items():
            if e.get("sAMAccountName", [""])[0].lower() == sam.lower() and (
                    object_class == "*" or object_class in e.get("objectClass", ["user"])):
                return {"dn": dn, "attributes": e}
        return None

    def search(self, base, flt, attrs=(), *, scope="SUBTREE", controls=None):
        if scope == "BASE":
            return [{"dn": base, "attributes": self.entries[base]}] if base in self.entries else []
        return [{"dn": dn, "attributes": e} for dn, e in self.entries.items() if da.under(dn, base)
                and "group" in e.get("objectClass", []) and "(objectClass=group)" in flt]

    def add(self, dn, classes, attrs):
        self.writes.append(("add", dn))
        self.entries[dn] = {"objectClass": classes, **{k: [v] for k, v in attrs.items()}}

    def replace(self, dn, changes):
        self.writes.append(("modify", dn, tuple(sorted(changes))))
        self.entries[dn].update({k: v if isinstance(v, list) else [v] for k, v in changes.items()})

    def delete_tree(self, dn):
        self.writes.append(("delete", dn))
        return self.entries.pop(dn, None) is not None

    def sync_groups(self, user_dn, groups):
        return {"added": [], "removed": []}


def people() -> dict[str, dict]:
    return {
        f"CN=alice,{PEOPLE}": {"objectClass": ["user"], "sAMAccountName": ["alice"], "objectSid": ["S-1-5-21-9-1601"],
                               "userAccountControl": [str(da.UF_NORMAL_ACCOUNT)], "pwdLastSet": ["1340"]},
        f"CN=hpc,{PEOPLE}": {"objectClass": ["group"], "sAMAccountName": ["hpc"]},
        # Outside the stack's OU: the domain's own accounts (never the stack's to change).
        "CN=Administrator,CN=Users,DC=test,DC=domain": {"objectClass": ["user"], "sAMAccountName": ["Administrator"]},
        "CN=Domain Admins,CN=Users,DC=test,DC=domain": {"objectClass": ["group"], "sAMAccountName": ["Domain Admins"]},
        "CN=jsmith,CN=Users,DC=test,DC=domain": {"objectClass": ["user"], "sAMAccountName": ["jsmith"]},
    }




def settings() -> da.Settings:
    return da.load_settings(ENV)


# == attacks refused today (keep passing) ============================================================================

@pytest.mark.parametrize("action", ["create", "update"])
def test_refused_an_input_for_another_directory_does_nothing_and_its_dns_ips_are_never_dialled(action):
    """Whoever writes an Invocation input (only principals allowed lambda:InvokeFunction: nodes are not) cannot
    make the function work on a directory of their choosing: a directoryId that is not the function's own is
    refused before any LDAP write, and the LDAP connection goes only to the function's own DNS_IPS (the admin
    password is sent by simple bind: an attacker-chosen dnsIps would receive it)."""
    dialled: list[list[str]] = []

    class Conn:
        result: dict = {}

        def unbind(self):
            pass

    def connect(s, password):
        dialled.append(list(s.dns_ips))
        return Conn()

    ev = {"resource": "directory", "ou": "pcluster-ad-dev", "directoryId": "d-0ther00000",
          "dnsIps": ["203.0.113.66"], "tf": {"action": action, "prev_input": {}}}

    class NoSsm(AnySecureString):
        def get_parameter(self, Name, WithDecryption):
            return {"Parameter": {"Value": "adm1n"}}

    with pytest.raises(da.DirectoryError, match="is for directory d-0ther00000, this function manages d-1234567890"):
        da.handle(ev, settings=settings(), ec2=None, ssm=NoSsm(ENV["KMS_KEY_ARN"]), ds=None, dynamodb=None,
                  connect=connect)
    assert dialled == [DC_IPS]  # never the event's 203.0.113.66
    # A user event naming another directory: same.
    with pytest.raises(da.DirectoryError, match="is for directory"):
        da.handle({**ev, "resource": "user", "name": "mallory", "groups": []}, settings=settings(), ec2=None,
                  ssm=NoSsm(ENV["KMS_KEY_ARN"]), ds=None, dynamodb=None, connect=connect)
    assert dialled == [DC_IPS, DC_IPS]


@pytest.mark.parametrize("name", ["ADMINISTRATOR", "administrator", "JSmith", "domain admins"])
def test_refused_a_declared_name_that_case_folds_onto_a_domain_account_is_never_renamed_or_changed(name):
    """Case tricks: a user (or group) declared as ADMINISTRATOR / JSmith is the domain's own account to AD
    (sAMAccountName ignores case). Create, case-only update and delete all refuse (NotOurs) before any write:
    the account is not renamed in place into the stack's spelling, not given the stack's groups or password, not
    deleted, and no owner token is written on it."""
    d = DictDirectory(people())
    before = json.dumps(d.entries, sort_keys=True)
    kind = "group" if name.lower() == "domain admins" else "user"
    for action, prev in (("create", {}), ("update", {"name": name.lower()}), ("update", {"name": name.swapcase()}),
                         ("delete", {})):
        ev = {"resource": kind, "name": name, "groups": [], "owner": "directory-admin-user-x@pcad-dev-eu-west-1-dir",
              "tf": {"action": action, "prev_input": prev}}
        with pytest.raises(da.NotOurs):
            da.handle_resource(ev, settings=settings(), directory=d, ssm=AnySecureString(ENV["KMS_KEY_ARN"]))
    assert d.writes == [] and json.dumps(d.entries, sort_keys=True) == before


@pytest.mark.parametrize("name", ["a)(sAMAccountName=*", "x*", "a\\b", "a,OU=x", "a=b", "a|b", "a\x00b"])
def test_refused_ldap_special_characters_in_names(name):
    """Names that would change an LDAP filter or DN are refused by the sAMAccountName rules before anything runs
    (stack_config uses the same sam_problem)."""
    assert da.sam_problem(name)
    with pytest.raises(da.DirectoryError, match="bad resource event"):
        da.handle_resource({"resource": "user", "name": name, "tf": {"action": "delete"}}, settings=settings(),
                           directory=DictDirectory(people()), ssm=AnySecureString(ENV["KMS_KEY_ARN"]))


def test_refused_parentheses_and_hash_are_escaped_in_filters_and_dns():
    """What sam_problem allows ( ( ) & ! # leading/trailing-in-the-middle spaces ) is escaped where it meets LDAP."""
    seen: list[str] = []

    class D(da.Directory):
        def search(self, base, flt, attrs=(), **kw):
            seen.append(flt)
            return []

    d = D(None, da.Layout("test.domain", "pcluster-ad-dev"), lambda *a: None)
    assert d.find_account("a)(|(x", "user") is None and da.sam_problem("a)(|(x") is not None  # '|' refused
    d.find_account("a)(!(x&", "user")
    assert seen[-1] == "(&(objectClass=user)(sAMAccountName=a\\29\\28!\\28x&))"
    assert da.escape_rdn("#root") == "\\#root"


def test_refused_the_function_can_be_invoked_only_by_its_own_rules_and_nodes_get_no_way_to_it(run_stack):
    """Root on a node, a job, or anyone holding the node role: no lambda:InvokeFunction, no events:*, no table
    write. DirectoryAdmin's resource policy names only EventBridge, each permission bound to the stack's own rule
    (source ARN), so a rule of someone else's cannot target it; the sweep's input is fixed in the target."""
    g = run_stack(secrets={"pcluster-ad:adminPassword": ADMIN_SECRET})
    perms = [r for r in g.of_type("aws:lambda/permission:Permission") if r.name.startswith("directory-admin")]
    assert len(perms) == 3  # terminated, sweep, access-sync
    for p in perms:
        assert p.inputs["principal"] == "events.amazonaws.com" and p.inputs["action"] == "lambda:InvokeFunction"
        assert p.inputs.get("sourceArn"), f"{p.name}: not bound to its rule"
    targets = {r.name: r.inputs for r in g.of_type("aws:cloudwatch/eventTarget:EventTarget")}
    assert json.loads(targets["directory-admin-sweep-target"]["input"]) == {"op": "sweep"}
    assert json.loads(targets["directory-admin-access-sync-target"]["input"]) == {"op": "access-sync"}
    node_policies = [json.dumps(r.inputs.get("policy"), default=str) for r in g.of_type("aws:iam/policy:Policy")
                     if r.name.startswith(("cluster-role", "join-function"))]
    assert node_policies
    for text in node_policies:
        assert "lambda:InvokeFunction\"" not in text and "events:" not in text and "dynamodb:" not in text
        assert "ssm:" not in text and "ds:" not in text


def test_refused_directory_admin_dns_egress_is_53_to_the_dcs_only(run_stack):
    """The DNS rule (issue 17, finding 1) reaches only the directory's DNS IPs: no new destination; the function's
    only way to anything else stays 443 (which already carried anything it could send). No ingress."""
    g = run_stack(secrets={"pcluster-ad:adminPassword": ADMIN_SECRET})
    sg = g.named("directory-admin-sg").inputs
    assert sg["ingress"] == []
    got = sorted((e["protocol"], e["fromPort"], e["toPort"], tuple(e["cidrBlocks"])) for e in sg["egress"])
    dcs = [c for e in sg["egress"] if e["fromPort"] == 389 for c in e["cidrBlocks"]]
    assert len(dcs) == 2 and all(c.endswith("/32") for c in dcs)
    want = sorted([("tcp", 443, 443, ("0.0.0.0/0",))] + [("tcp", 389, 389, (c,)) for c in dcs]
                  + [(p, 53, 53, (c,)) for c in dcs for p in ("tcp", "udp")])
    assert got == want


def test_refused_the_resolver_rule_forwards_exactly_the_domain_to_the_dcs_in_the_stacks_vpc(run_stack):
    """The Resolver rule cannot redirect more than the AD domain: FORWARD, domain = the configured AD domain (not
    a parent), targets the DC IPs on 53 only, associated with the adopted VPC only (no RAM share); its endpoint's
    group: no ingress, 53 to the DCs only."""
    from tests.test_domain_dns import DC_IPS as IPS
    from tests.test_domain_dns import EXISTING_DIRECTORY, RULE, RULE_ASSOC, VPC, adopt, mocks

    g = run_stack(adopt(directory=EXISTING_DIRECTORY), mocks=mocks(),
                  secrets={"pcluster-ad:joinPassword": "J0in-Secret-Passw0rd!"})
    (rule,) = g.of_type(RULE)
    assert rule.inputs["ruleType"] == "FORWARD" and rule.inputs["domainName"] == "corp.example.com"
    assert sorted((t["ip"], t["port"]) for t in rule.inputs["targetIps"]) == sorted((ip, 53) for ip in IPS)
    (assoc,) = g.of_type(RULE_ASSOC)
    assert assoc.inputs["vpcId"] == VPC
    assert not [r for r in g.resources if r.type.startswith("aws:ram/")]
    sg = g.named("domain-dns-sg").inputs
    assert sg["ingress"] == [] and {(e["protocol"], e["fromPort"], e["toPort"]) for e in sg["egress"]} == {
        ("udp", 53, 53), ("tcp", 53, 53)}


class _DsStandIn(BaseHTTPRequestHandler):
    """Directory Service's JSON endpoint on loopback: UserDoesNotExistException `fail` times, then success."""

    fail = 0
    bodies: list[bytes] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _DsStandIn.bodies.append(body)
        if _DsStandIn.fail:
            _DsStandIn.fail -= 1
            out, status = {"__type": "UserDoesNotExistException", "Message": "User does not exist."}, 400
        else:
            out, status = {}, 200
        data = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def ds_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _DsStandIn)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    _DsStandIn.bodies = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("fail", [2, 50])
def test_refused_replication_retries_never_log_the_password(ds_endpoint, caplog, fail):
    """The retries (finding 3) through a REAL botocore client with the root logger at DEBUG (as
    AWS_LAMBDA_LOG_LEVEL=DEBUG would set it): the password reaches the wire (the stand-in sees it) but no log
    record, no wait message and no error (with its cause chain, as Lambda prints it) carries it."""
    secret = "In1tial-Pw-" + "q7Zx93!"
    _DsStandIn.fail = fail
    ds = boto3.client("ds", region_name="eu-west-1", endpoint_url=ds_endpoint, aws_access_key_id="x",
                      aws_secret_access_key="x")
    caplog.set_level(logging.DEBUG)  # the root logger: botocore's own level is pinned by the module
    d = DictDirectory({})
    d.set_password = da.ds_password_setter(ds, "d-1234567890")
    d.replication = da.ReplicationWait(sleep=lambda s: None)
    error = ""
    try:
        d.upsert_user("carol", initial_password=lambda: secret)
    except da.DirectoryError as exc:
        error = "".join(traceback.format_exception(exc))
    assert any(secret.encode() in b for b in _DsStandIn.bodies)  # it was sent
    assert (error != "") == (fail == 50)
    assert secret not in caplog.text and secret not in error
    assert "replication wait" in caplog.text


def test_refused_route_out_and_dhcp_messages_name_ids_only(run_stack, monkeypatch):
    """The adopted VPC's checks print resource ids (VPC, subnets, route tables, NAT, DHCP options), never a
    secret config value: a failing route-out check, and the DhcpOptions warnings, with the admin and join
    passwords set."""
    import pulumi

    from tests.test_domain_dns import EXISTING_DIRECTORY, SUBNETS, adopt, mocks

    messages: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: messages.append(str(msg)))
    monkeypatch.setattr(pulumi.log, "error", lambda msg, *a, **k: messages.append(str(msg)))
    directory = {**EXISTING_DIRECTORY, "adminUser": "Admin", "directoryId": "d-1234567890",
                 "parentOu": "OU=CORP,DC=corp,DC=example,DC=com"}
    secrets = {"pcluster-ad:joinPassword": "J0in-Secret-Passw0rd!", "pcluster-ad:adminPassword": ADMIN_SECRET}
    cut = mocks()
    cut.route_tables = {s: [] for s in SUBNETS}  # no route out anywhere: the check fails, naming what it found
    with pytest.raises(RunError):
        run_stack(adopt("DhcpOptions", directory=directory), mocks=cut, secrets=secrets)
    assert any("no 0.0.0.0/0 route" in m for m in messages)
    run_stack(adopt("DhcpOptions", directory=directory), mocks=mocks(), secrets=secrets)
    assert any("DhcpOptions" in m for m in messages)
    text = "\n".join(messages)
    assert ADMIN_SECRET not in text and "J0in-Secret-Passw0rd!" not in text


def test_refused_every_wildcard_resource_of_directory_admin_has_its_reason(run_stack):
    """Issue 17 added no IAM statement (the Resolver endpoint and rule are the operator's, not a role's). The
    DirectoryAdmin role's `*` resources are exactly the three whose actions take no narrower resource (each with
    its comment in the component); everything else is scoped to the stack's own ARNs."""
    g = run_stack(secrets={"pcluster-ad:adminPassword": ADMIN_SECRET})
    policy = g.named("directory-admin-role-policy").inputs["policy"]
    doc = json.loads(policy) if isinstance(policy, str) else policy
    wild = {s["Sid"]: sorted(s["Action"]) for s in doc["Statement"] if s["Resource"] == "*"}
    assert wild == {
        "CheckParameterKeys": ["ssm:DescribeParameters"],
        "DescribeInstances": ["ec2:DescribeInstances"],
        "AttachToVpc": sorted(["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
                               "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
                               "ec2:UnassignPrivateIpAddresses"]),
    }
    assert all(s["Effect"] == "Allow" for s in doc["Statement"])
    source = (da.__file__.replace("lambda_src/directory_admin.py", "components/directory_admin.py"))
    text = open(source).read()
    assert "# `*`: ssm:DescribeParameters supports no resource-level permissions" in text
    assert "# `*`: EC2 Describe* actions support no resource-level permissions." in text


# == findings (fail today) =============================================================================================

def test_attack_finding_2_existing_directory_dns_ips_outside_the_private_ranges_are_refused(run_stack):
    typo = ["203.0.113.10", "10.0.1.10"]  # 10.0.0.10 mistyped as a public address
    with pytest.raises((ConfigError, RunError)):
        g = run_stack(existing_directory(typo), secrets={"pcluster-ad:adminPassword": ADMIN_SECRET})
        # What the plan would do with it: the admin password in a simple bind to 203.0.113.10:389, via the NAT.
        egress = g.named("directory-admin-sg").inputs["egress"]
        assert any(e["fromPort"] == 389 and e["cidrBlocks"] == ["203.0.113.10/32"] for e in egress)


class _Counting(PlanMocks):
    """PlanMocks that count the resources the program declares."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.declared = 0

    def new_resource(self, args):
        self.declared += 1
        return super().new_resource(args)


@pytest.mark.parametrize("dns_ips,recorded_domain,key,says", [
    (["10.0.0.10", "10.0.1.11"], "test.domain", "directory.dnsIps", "10.0.1.11 not among directory d-1234567890"),
    (DC_IPS, "other.domain", "directory.domainName",
     "'test.domain' is not directory d-1234567890's domain ('other.domain')")])
def test_attack_finding_2_an_existing_directory_must_agree_with_its_record(run_stack, monkeypatch, dns_ips,
                                                                          recorded_domain, key, says):
    """Private but wrong (another host in the VPC, another directory's DC): with directoryId, the config's dnsIps
    and domainName are compared with Directory Service's record (get_directory) before anything is declared."""
    import pulumi

    errors: list[str] = []
    monkeypatch.setattr(pulumi.log, "error", lambda msg, *a, **k: errors.append(str(msg)))
    record = {"d-1234567890": {"name": recorded_domain, "dnsIpAddresses": DC_IPS, "type": "MicrosoftAD"}}
    mocks = _Counting(directories=record)
    with pytest.raises(RunError, match="nothing was created"):
        run_stack(existing_directory(dns_ips), mocks=mocks, secrets={"pcluster-ad:adminPassword": ADMIN_SECRET})
    assert mocks.declared == 0
    (error,) = errors
    assert error.startswith(f"pcluster-ad:{key}: ") and says in error
    # The directory's own IPs (one of them is enough: it may have more DCs), its domain in any case: accepted.
    record = {"d-1234567890": {"name": "TEST.Domain", "dnsIpAddresses": DC_IPS, "type": "MicrosoftAD"}}
    for ips in (DC_IPS, ["10.0.1.10"]):
        ok = _Counting(directories=record)
        g = run_stack(existing_directory(ips), mocks=ok, secrets={"pcluster-ad:adminPassword": ADMIN_SECRET})
        assert ok.declared and g.outputs["directoryDnsIps"] == ips


def test_attack_finding_2_an_ad_connector_is_compared_with_its_customer_dns_ips(run_stack):
    """An AD Connector's record lists its own connector IPs as dnsIpAddresses (the provider's data source); the
    domain controllers it connects to are connectSettings.customerDnsIps: those are accepted, nothing else."""
    record = {"d-1234567890": {"name": "test.domain", "dnsIpAddresses": ["10.0.5.5", "10.0.6.6"],
                               "type": "ADConnector", "connectSettings": [{"customerDnsIps": DC_IPS}]}}
    secrets = {"pcluster-ad:adminPassword": ADMIN_SECRET}
    run_stack(existing_directory(DC_IPS), mocks=PlanMocks(directories=record), secrets=secrets)
    with pytest.raises(RunError):
        run_stack(existing_directory(["10.0.0.10", "10.0.9.9"]), mocks=PlanMocks(directories=record), secrets=secrets)


@pytest.mark.parametrize("kind,old,new", [("user", "alice", "jsmith"), ("group", "hpc", "Domain Admins")])
def test_attack_finding_3_a_rename_onto_a_taken_name_deletes_nothing(kind, old, new):
    """handle_resource says "everything that can refuse is checked before the first write (also before a rename's
    delete)": for a new name that is a domain account outside the stack's OU, the old one is deleted, then the
    upsert refuses. (Pulumi itself sends a rename as a new Invocation; this input comes from whoever can invoke
    the function, or a state edit.)"""
    d = DictDirectory(people())
    ev = {"resource": kind, "name": new, "groups": [], "tf": {"action": "update", "prev_input": {"name": old}}}
    with pytest.raises(da.NotOurs):
        da.handle_resource(ev, settings=settings(), directory=d, ssm=AnySecureString(ENV["KMS_KEY_ARN"]))
    assert d.writes == [] and f"CN={old},{PEOPLE}" in d.entries


@pytest.mark.parametrize("kind", ["directory", "user"])
def test_attack_finding_4_a_directory_switch_says_what_it_leaves_in_the_old_one(kind, caplog):
    """The Invocation's update after `directory.directoryId` changed: prev_input names the old directory. The
    function works only on its own (new) directory; it must at least say (answer or WARNING log) that the old
    directory still holds the stack's accounts, or refuse until they are removed."""
    caplog.set_level(logging.INFO, logger="directory_admin")
    d = DictDirectory(people())
    d.ensure_layout = lambda *a, **k: []  # stand-ins whatever the setup's arguments (a deployment mark, issue 17)
    d.ensure_adding_account = lambda *a, **k: {"account": None}
    d.claim = lambda *a, **k: True
    old = "d-0ld0000000"
    payload = ({"resource": "directory", "ou": "pcluster-ad-dev", "setupVersion": 2} if kind == "directory" else
               {"resource": "user", "name": "alice", "groups": []})
    ev = {**payload, "directoryId": "d-1234567890", "dnsIps": DC_IPS,
          "tf": {"action": "update", "prev_input": {**payload, "directoryId": old, "dnsIps": ["10.9.0.10"]}}}
    out = da.handle_resource(ev, settings=settings(), directory=d, ssm=AnySecureString(ENV["KMS_KEY_ARN"]))
    assert old in json.dumps(out, default=str) + caplog.text


@pytest.mark.parametrize("kind", ["directory", "group", "user"])
def test_attack_finding_4_the_switch_note_names_the_old_directory_and_what_stays_there(kind, caplog):
    """The note: a WARNING log line and `leftInPreviousDirectory` in the result (the Invocation's), naming the old
    directory and what stays there (the OU with the adding account and users, or the renamed-away user/group);
    nothing when the update stays on the same directory (or the old input predates directoryId)."""
    caplog.set_level(logging.INFO, logger="directory_admin")
    d = DictDirectory(people())
    d.ensure_layout = lambda *a, **k: []
    d.ensure_adding_account = lambda *a, **k: {"account": None}
    d.claim = lambda *a, **k: True
    payload = {"directory": {"resource": "directory", "ou": "pcluster-ad-dev", "setupVersion": 2},
               "group": {"resource": "group", "name": "hpc"},
               "user": {"resource": "user", "name": "alice", "groups": []}}[kind]
    ev = {**payload, "directoryId": "d-1234567890", "tf": {"action": "update", "prev_input": {
        **payload, "directoryId": "d-0ld0000000"}}}
    out = da.handle_resource(ev, settings=settings(), directory=d, ssm=AnySecureString(ENV["KMS_KEY_ARN"]))
    note = out["leftInPreviousDirectory"]
    assert note["directoryId"] == "d-0ld0000000"
    assert ("OU=pcluster-ad-dev" in note["left"][0] and "users (enabled)" in note["left"][0]) if kind == "directory" \
        else note["left"] == [f"{kind} {payload['name']}" + (" (enabled, with its password)" if kind == "user" else "")]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "d-0ld0000000" in warning.getMessage() and "d-1234567890" in warning.getMessage()
    caplog.clear()
    for prev in ({**payload, "directoryId": "d-1234567890"}, payload):
        out = da.handle_resource({**ev, "tf": {"action": "update", "prev_input": prev}}, settings=settings(),
                                 directory=d, ssm=AnySecureString(ENV["KMS_KEY_ARN"]))
        assert "leftInPreviousDirectory" not in out
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_attack_finding_5_forged_own_tags_on_an_amazon_dns_set_do_not_switch_the_vpc_dns(run_stack):
    from tests.test_domain_dns import DHCP_ASSOC, adopt, mocks

    forged = {"Name": "directory-dhcp", "pcluster-ad:stack": "dev", "pcluster-ad:previous-dhcp-options":
              "dopt-0badbadbadbadbad0"}
    # The stack's own set always names the directory's DNS IPs; this one sends DNS to the Amazon-provided resolver.
    g = run_stack(adopt(), mocks=mocks(servers=["AmazonProvidedDNS"], tags=forged, current="dopt-0aaaaaaaaaaaaaaa0"))
    assert g.outputs["domainDns"] == "ResolverRule" and not g.of_type(DHCP_ASSOC)
    assert "dopt-0badbadbadbadbad0" not in json.dumps(g.outputs, default=str)
