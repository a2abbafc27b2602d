"""Lifecycle judge: the order in which Pulumi's engine would create, update, replace and destroy the plan's
resources, and whether every piece of code that runs during those steps finds what it needs.

    venv/bin/python -m pcluster_ad.tools.plan dev --out plan-out
    venv/bin/python -m pcluster_ad.tools.lifecycle_judge plan-out/resources.json

The engine's rules, as modelled here (pulumi/pulumi pkg/resource/graph/dependency_graph.go, `DependenciesOf`;
the Python SDK's `_add_dependency` in sdk/python/lib/pulumi/runtime/rpc.py):
* A resource depends on its `dependencies` (depends_on and the resources its inputs came from) and on its parent.
  `depends_on` a local ComponentResource is expanded by the SDK to the component's custom descendants registered
  so far (not the children of custom resources); the engine also adds a component dependency's descendants
  registered before the dependent. A component's children do not wait for another component's children unless
  one depends on the other.
* Create/update: after everything it depends on. Destroy: dependents first, everything else in parallel; so
  "X still exists while Y's delete runs" holds only if Y depends on X, directly or transitively.
* Replace: create the new one, update the dependents, delete the old one at the end (its delete runs with its
  OLD inputs, after the new one's create); with delete_before_replace the old one is deleted first. So every CRUD
  Invocation replaced create-before-delete needs a replace-safe handler and its owner in its input
  (replace_safety_findings), or the old delete undoes what the new create made.

Code runs during these steps for: `aws.lambda_.Invocation` (lifecycle_scope CRUD: create, update and delete;
else create and update), pulumi-command Commands (the ClusterLauncher: pcluster create/update/delete), and
functions that EventBridge targets call while the stack changes (EC2 termination events during a cluster
delete or update; schedules at any time). For each, `code_runs` declares what the code needs at that moment and
`judge` reports every need that is not among its transitive dependencies (for an event-invoked function: among
the EventTarget's, so that the trigger goes before anything its function needs).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"<after-deploy:([^<>]+)\.[A-Za-z][A-Za-z0-9]*(?:\[\d+\])?>")

T_FUNCTION = "aws:lambda/function:Function"
T_INVOCATION = "aws:lambda/invocation:Invocation"
T_PERMISSION = "aws:lambda/permission:Permission"
T_FUNCTION_URL = "aws:lambda/functionUrl:FunctionUrl"
T_COMMAND = "command:local:Command"
T_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
T_ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
T_SUBNET = "aws:ec2/subnet:Subnet"
T_RTA = "aws:ec2/routeTableAssociation:RouteTableAssociation"
T_ROUTE_TABLE = "aws:ec2/routeTable:RouteTable"
T_ROUTE = "aws:ec2/route:Route"
T_NAT = "aws:ec2/natGateway:NatGateway"
T_SG = "aws:ec2/securityGroup:SecurityGroup"
T_SG_RULES = ("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
              "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
              "aws:ec2/securityGroupRule:SecurityGroupRule")
T_DIRECTORY = "aws:directoryservice/directory:Directory"
T_DHCP_ASSOC = "aws:ec2/vpcDhcpOptionsAssociation:VpcDhcpOptionsAssociation"
T_RESOLVER_ASSOC = "aws:route53/resolverRuleAssociation:ResolverRuleAssociation"
T_PARAMETER = "aws:ssm/parameter:Parameter"
T_KEY = "aws:kms/key:Key"
T_TABLE = "aws:dynamodb/table:Table"
T_EVENT_RULE = "aws:cloudwatch/eventRule:EventRule"
T_EVENT_TARGET = "aws:cloudwatch/eventTarget:EventTarget"
T_OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
T_EFS = "aws:efs/fileSystem:FileSystem"
T_MOUNT_TARGET = "aws:efs/mountTarget:MountTarget"
T_POLICY = "aws:iam/policy:Policy"


def refs(value: Any) -> set[str]:
    """Names of the resources whose after-deploy values appear in `value` (any nesting, JSON strings too)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return set(PLACEHOLDER.findall(text))


@dataclass(frozen=True)
class Res:
    type: str
    name: str
    parent: str | None
    dependencies: tuple[str, ...]
    inputs: dict[str, Any]
    options: dict[str, Any]

    @property
    def custom(self) -> bool:  # ComponentResources of this program are pcluster-ad:index:*; they run nothing
        return not self.type.startswith("pcluster-ad:")


class Plan:
    """The plan's resources (resources.json order = registration order) and the engine's ordering over them."""

    def __init__(self, resources: Sequence[dict[str, Any]]):
        self.resources = [Res(r["type"], r["name"], r.get("parent"), tuple(r.get("dependencies") or ()),
                              r.get("inputs") or {}, r.get("options") or {}) for r in resources]
        self.by_name = {r.name: r for r in self.resources}
        self._index = {r.name: i for i, r in enumerate(self.resources)}
        self._children: dict[str, list[str]] = {}
        for r in self.resources:
            if r.parent:
                self._children.setdefault(r.parent, []).append(r.name)
        self._closure: dict[str, frozenset[str]] = {}

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls(json.loads(Path(path).read_text()))

    def of_type(self, typ: str | Iterable[str]) -> list[Res]:
        types = {typ} if isinstance(typ, str) else set(typ)
        return [r for r in self.resources if r.type in types]

    def descendants(self, name: str) -> list[str]:
        out, todo = [], list(self._children.get(name, []))
        while todo:
            n = todo.pop()
            out.append(n)
            if not self.by_name[n].custom:  # the children of a custom resource are not expanded
                todo.extend(self._children.get(n, []))
        return out

    def direct(self, name: str) -> set[str]:
        """What the engine makes `name` wait for (DependenciesOf): dependencies, a component dependency's
        descendants registered before it, and its parent."""
        r = self.by_name[name]
        out = {d for d in r.dependencies if d in self.by_name}
        for d in list(out):
            if not self.by_name[d].custom:
                out.update(c for c in self.descendants(d) if self._index[c] < self._index[name])
        if r.parent in self.by_name:
            out.add(r.parent)
        return out

    def closure(self, name: str) -> frozenset[str]:
        """Everything `name` depends on, transitively (what exists before its create and after its delete)."""
        if name not in self._closure:
            seen: set[str] = set()
            todo = list(self.direct(name))
            while todo:
                n = todo.pop()
                if n not in seen:
                    seen.add(n)
                    todo.extend(self.direct(n))
            self._closure[name] = frozenset(seen)
        return self._closure[name]

    def outlives(self, runner: str, other: str) -> bool:
        """Does `other` exist while `runner`'s delete runs on destroy (and before its create)?"""
        return other in self.closure(runner)

    def create_order(self) -> list[list[str]]:
        """Waves of custom resources: each wave may run in parallel once the waves before it are done."""
        level: dict[str, int] = {}
        for r in self.resources:  # registration order is a topological order
            level[r.name] = 1 + max((level[d] for d in self.direct(r.name) if d in level), default=-1)
        return _waves(level, self)

    def destroy_order(self) -> list[list[str]]:
        """Waves of `pulumi destroy`: a resource goes once everything that depends on it has gone."""
        dependents: dict[str, set[str]] = {r.name: set() for r in self.resources}
        for r in self.resources:
            for d in self.direct(r.name):
                dependents[d].add(r.name)
        level: dict[str, int] = {}
        for r in reversed(self.resources):
            level[r.name] = 1 + max((level[d] for d in dependents[r.name]), default=-1)
        return _waves(level, self)

    def worst_case_destroy(self, runners: Iterable[str]) -> list[str]:
        """One legal `pulumi destroy` order (each resource after everything that depends on it) in which every
        resource that runs no code goes as early as the rules allow: the worst case for code that runs on delete
        (the engine may do exactly this, as deletes of independent resources run in parallel)."""
        code = set(runners)
        dependents: dict[str, set[str]] = {r.name: set() for r in self.resources}
        for r in self.resources:
            for d in self.direct(r.name):
                dependents[d].add(r.name)
        gone: set[str] = set()
        order: list[str] = []
        while len(gone) < len(self.resources):
            ready = sorted(n for n in dependents if n not in gone and dependents[n] <= gone)
            pick = next((n for n in ready if n not in code), ready[0])
            gone.add(pick)
            if self.by_name[pick].custom:
                order.append(pick)
        return order

    def replace_steps(self, name: str) -> list[str]:
        """What a replacement of `name` runs, in order."""
        if self.by_name[name].options.get("deleteBeforeReplace"):
            return [f"delete old {name} (its dependents that are replaced too go first)", f"create new {name}",
                    "update dependents"]
        return [f"create new {name}", "update or replace dependents",
                f"delete old {name} (at the end of the update, with its old inputs)"]

    # lookups
    def named_by(self, typ: str | Iterable[str], value: Any, key: str = "name") -> list[Res]:
        """Resources of `typ` that `value` names: by an after-deploy placeholder, or by their `key` input."""
        names = refs(value)
        return [r for r in self.of_type(typ)
                if r.name in names or (isinstance(value, str) and r.inputs.get(key) == value)]


def _waves(level: dict[str, int], plan: Plan) -> list[list[str]]:
    waves: dict[int, list[str]] = {}
    for name, lv in level.items():
        if plan.by_name[name].custom:
            waves.setdefault(lv, []).append(name)
    return [sorted(waves[k]) for k in sorted(waves)]


@dataclass(frozen=True)
class Need:
    what: str
    resource: str


@dataclass
class CodeRun:
    resource: str  # the resource whose steps run the code, or the EventTarget that calls it
    code: str
    phases: tuple[str, ...]
    needs: list[Need] = field(default_factory=list)

    def add(self, what: str, names: Iterable[str]) -> None:
        for n in sorted(set(names)):
            if n != self.resource and Need(what, n) not in self.needs:
                self.needs.append(Need(what, n))


@dataclass(frozen=True)
class Finding:
    resource: str
    code: str
    phases: tuple[str, ...]
    what: str
    missing: str

    def __str__(self) -> str:
        return (f"{self.resource} ({'/'.join(self.phases)}: {self.code}) needs {self.what} {self.missing}, but does"
                f" not depend on it: on destroy {self.missing} may be deleted before (or concurrently with) this code")


# -- what code needs -------------------------------------------------------------------------------------------

def network_path(plan: Plan, subnets: Iterable[str]) -> list[tuple[str, str]]:
    """(what, resource) for traffic out of these subnets: the subnets, their route table associations and tables,
    the NAT gateways those route to, their EIPs and public subnets, and those subnets' route to the internet
    gateway (table, association, gateway). Resources outside the stack (an adopted VPC) are not in the plan."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    todo = [s for s in subnets if s in plan.by_name]
    while todo:
        subnet = todo.pop()
        if subnet in seen:
            continue
        seen.add(subnet)
        out.append(("its subnet", subnet))
        for assoc in plan.of_type(T_RTA):
            if subnet not in refs(assoc.inputs.get("subnetId")):
                continue
            out.append((f"the route table association of {subnet}", assoc.name))
            for table in plan.named_by(T_ROUTE_TABLE, assoc.inputs.get("routeTableId"), key="id"):
                out.append((f"the route table of {subnet}", table.name))
                routes = list(table.inputs.get("routes") or [])
                for route in plan.of_type(T_ROUTE):  # routes declared as resources of their own
                    if table.name in refs(route.inputs.get("routeTableId")):
                        out.append((f"a route of {subnet}'s table", route.name))
                        routes.append({k: v for k, v in route.inputs.items() if k != "routeTableId"})
                for route in routes:
                    for target in refs(route):
                        t = plan.by_name.get(target)
                        if t is None:
                            continue
                        out.append((f"the route out of {subnet} ({t.type.rsplit(':', 1)[-1]})", target))
                        if t.type == T_NAT:
                            for eip in refs(t.inputs.get("allocationId")):
                                out.append((f"the Elastic IP of NAT gateway {target}", eip))
                            todo.extend(s for s in refs(t.inputs.get("subnetId")) if s in plan.by_name)
    return out


def function_needs(plan: Plan, fn: Res) -> list[tuple[str, str]]:
    """What a run of this function needs: itself, its role's policies, the parameters, key and table its code
    reads, its security groups (and their rules), its network path, and the directory it talks to."""
    out = [("the function", fn.name)]
    roles = refs(fn.inputs.get("role"))
    granted: set[str] = set()
    for p in plan.of_type((T_ROLE_POLICY, T_ROLE_POLICY_ATTACHMENT)):
        role_ref = p.inputs.get("role")
        if refs(role_ref) & roles or any(plan.by_name[r].inputs.get("name") == role_ref for r in roles):
            out.append(("its role policy", p.name))
            granted |= refs(p.inputs.get("policy"))
    env = (fn.inputs.get("environment") or {}).get("variables") or {}
    for name in granted | refs(env):
        r = plan.by_name.get(name)
        if r is not None and r.type in (T_PARAMETER, T_KEY, T_TABLE):
            out.append((f"the {r.type.rsplit(':', 1)[-1]} its code reads", name))
        if r is not None and r.type == T_DIRECTORY:
            out.append(("the directory", name))
    for value in env.values():
        for r in plan.named_by((T_PARAMETER, T_TABLE), value):
            out.append((f"the {r.type.rsplit(':', 1)[-1]} its code reads", r.name))
    vpc = fn.inputs.get("vpcConfig") or {}
    for sg in refs(vpc.get("securityGroupIds")):
        out.append(("its security group", sg))
        out += [("a rule of its security group", r.name) for r in plan.of_type(T_SG_RULES)
                if sg in refs(r.inputs.get("securityGroupId"))]
    out += [(f"its network path: {what}", name) for what, name in network_path(plan, refs(vpc.get("subnetIds")))]
    return out


def _function_named(plan: Plan, value: Any) -> Res | None:
    fns = plan.named_by(T_FUNCTION, value)
    return fns[0] if fns else None


def _payload(inv: Res) -> dict[str, Any]:
    try:
        data = json.loads(inv.inputs.get("input") or "{}")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _directory_setups(plan: Plan) -> list[Res]:
    return [i for i in plan.of_type(T_INVOCATION) if _payload(i).get("resource") == "directory"]


def _event_chain(plan: Plan, rule: Res) -> list[tuple[Res, Res | None]]:
    """(target, function) for each EventTarget of this rule."""
    out = []
    for t in plan.of_type(T_EVENT_TARGET):
        named = rule.inputs.get("name")
        if rule.name in refs(t.inputs.get("rule")) or (named is not None and t.inputs.get("rule") == named):
            out.append((t, _function_named(plan, t.inputs.get("arn"))))
    return out


def _invoke_permissions(plan: Plan, fn: Res, source: Res | None = None) -> list[str]:
    return [p.name for p in plan.of_type(T_PERMISSION)
            if (fn.name in refs(p.inputs.get("function")) or p.inputs.get("function") == fn.inputs.get("name"))
            and (source is None or source.name in refs(p.inputs.get("sourceArn")))]


def _is_termination_rule(rule: Res) -> bool:
    pattern = rule.inputs.get("eventPattern")
    try:
        data = json.loads(pattern) if isinstance(pattern, str) else {}
    except ValueError:
        return False
    return "terminated" in ((data.get("detail") or {}).get("state") or [])


def code_runs(plan: Plan) -> list[CodeRun]:
    runs: list[CodeRun] = []
    for inv in plan.of_type(T_INVOCATION):
        crud = inv.inputs.get("lifecycleScope") == "CRUD"
        payload = _payload(inv)
        fn = _function_named(plan, inv.inputs.get("functionName"))
        run = CodeRun(inv.name, f"invokes {fn.name if fn else inv.inputs.get('functionName')}"
                      f" ({payload.get('resource', 'payload')})",
                      ("create", "update", "delete") if crud else ("create", "update"))
        if fn is not None:
            for what, name in function_needs(plan, fn):
                run.add(what, [name])
            stack = ((fn.inputs.get("environment") or {}).get("variables") or {}).get("STACK")
            kind = payload.get("resource")
            if kind in ("user", "group"):
                run.add("the stack's OU (the directory setup)", [s.name for s in _directory_setups(plan)
                                                                 if s.name != inv.name])
            if kind == "user" and isinstance(stack, str) and isinstance(payload.get("name"), str):
                from pcluster_ad.lambda_src.directory_admin import initial_password_parameter_name

                parameter = initial_password_parameter_name(stack, payload["name"])
                run.add("the user's initial-password parameter",
                        [p.name for p in plan.named_by(T_PARAMETER, parameter)])
                groups = {g.lower() for g in payload.get("groups") or []}
                run.add("the user's groups", [i.name for i in plan.of_type(T_INVOCATION)
                                             if _payload(i).get("resource") == "group"
                                             and str(_payload(i).get("name", "")).lower() in groups])
        runs.append(run)

    for rule in plan.of_type(T_EVENT_RULE):
        for target, fn in _event_chain(plan, rule):
            if fn is None:
                continue
            when = "EC2 termination events" if _is_termination_rule(rule) else (
                f"schedule {rule.inputs.get('scheduleExpression')}" if rule.inputs.get("scheduleExpression")
                else "events")
            run = CodeRun(target.name, f"EventBridge calls {fn.name} on {when}", ("while it exists",))
            for what, name in function_needs(plan, fn):
                run.add(what, [name])
            run.add("the permission for EventBridge to invoke the function", _invoke_permissions(plan, fn, rule))
            runs.append(run)

    for cmd in plan.of_type(T_COMMAND):
        phases = tuple(p for p in ("create", "update", "delete") if cmd.inputs.get(p))
        run = CodeRun(cmd.name, "runs " + str(cmd.inputs.get("create") or cmd.inputs.get("delete"))[:60], phases)
        if "-m launcher" in str(cmd.inputs.get("create") or cmd.inputs.get("delete")):
            _cluster_needs(plan, cmd, run)
        runs.append(run)
    return runs


def _cluster_needs(plan: Plan, cmd: Res, run: CodeRun) -> None:
    """The ClusterLauncher: `pcluster create/update-cluster` boot nodes that join the domain through the join
    function; `pcluster delete-cluster` terminates them (their network interfaces hold the subnets and security
    groups, the stack's policies are attached to their roles, their termination events call DirectoryAdmin)."""
    config = str(cmd.inputs.get("stdin") or "")
    named = refs(config)
    subnets = [n for n in named if plan.by_name.get(n) and plan.by_name[n].type == T_SUBNET]
    run.add("the nodes' subnets", subnets)
    for what, name in network_path(plan, subnets):
        run.add(f"the nodes' network path: {what}", [name])
    for sg in (n for n in named if plan.by_name.get(n) and plan.by_name[n].type == T_SG):
        run.add("the nodes' security group", [sg])
        run.add("a rule of the nodes' security group",
                [r.name for r in plan.of_type(T_SG_RULES) if sg in refs(r.inputs.get("securityGroupId"))])
    run.add("a policy attached to the nodes' roles",
            [n for n in named if plan.by_name.get(n) and plan.by_name[n].type == T_POLICY])
    for efs in (n for n in named if plan.by_name.get(n) and plan.by_name[n].type == T_EFS):
        run.add("the home file system", [efs])
        for mt in plan.of_type(T_MOUNT_TARGET):
            if efs in refs(mt.inputs.get("fileSystemId")):
                run.add("a home mount target", [mt.name])
                run.add("a mount target's security group", refs(mt.inputs.get("securityGroups")))
    scripts = set(re.findall(r"s3://[^/\s]+/(\S+)", config))
    objects = [o for o in plan.of_type(T_OBJECT) if o.inputs.get("key") in scripts]
    run.add("a node bootstrap script", [o.name for o in objects])
    for obj in objects:
        for url in (plan.by_name[n] for n in refs(obj.inputs) if plan.by_name.get(n)
                    and plan.by_name[n].type == T_FUNCTION_URL):
            run.add("the join function URL", [url.name])
            fn = _function_named(plan, url.inputs.get("functionName"))
            if fn is not None:
                for what, name in function_needs(plan, fn):
                    run.add(f"the join function's {what.removeprefix('the ').removeprefix('its ')}", [name])
                run.add("the join function's invoke permissions", _invoke_permissions(plan, fn))
    run.add("the domain's DNS for the nodes", [r.name for r in plan.of_type((T_DHCP_ASSOC, T_RESOLVER_ASSOC))])
    run.add("the directory", [r.name for r in plan.of_type(T_DIRECTORY)])
    run.add("the stack's OU and computer-adding account (the directory setup)",
            [s.name for s in _directory_setups(plan)])
    for rule in plan.of_type(T_EVENT_RULE):
        if _is_termination_rule(rule):
            for target, _fn in _event_chain(plan, rule):
                run.add("the termination event's target (terminated nodes' computer objects)", [target.name])


def judge(plan: Plan, runs: list[CodeRun] | None = None) -> list[Finding]:
    findings = []
    for run in runs if runs is not None else code_runs(plan):
        deps = plan.closure(run.resource)
        for need in run.needs:
            if need.resource not in deps:
                findings.append(Finding(run.resource, run.code, run.phases, need.what, need.resource))
    return findings


def rerun_findings(plan: Plan) -> list[str]:
    """A CRUD Invocation that works on a directory the stack may replace must carry that directory in its input:
    a replaced directory then changes the input (an update) and the code runs again on the new one."""
    out = []
    for inv in plan.of_type(T_INVOCATION):
        fn = _function_named(plan, inv.inputs.get("functionName"))
        if fn is None:
            continue
        env = (fn.inputs.get("environment") or {}).get("variables") or {}
        text = str(inv.inputs.get("input"))
        for key in ("DIRECTORY_ID", "DNS_IPS"):
            value = env.get(key)
            parts = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else []
            if not all(p in text for p in parts):
                out.append(f"{inv.name}: its input does not carry {key} ({value}): a new directory would not re-run it")
    return out


def replacement_hazards(plan: Plan) -> list[str]:
    """CRUD Invocations replaced create-before-delete run the OLD delete after the NEW create: the old one's
    delete undoes what the new one just made unless the code tells them apart."""
    out = []
    for inv in plan.of_type(T_INVOCATION):
        if inv.inputs.get("lifecycleScope") == "CRUD" and not inv.options.get("deleteBeforeReplace"):
            out.append(f"{inv.name}: a replacement (functionName/qualifier/triggers change) runs "
                       + " -> ".join(plan.replace_steps(inv.name)))
    return out


def _handler_module(fn: Res) -> Any | None:
    """The handler module of a function whose code is this repository's lambda_src/<module>.py."""
    module = str(fn.inputs.get("handler") or "").rsplit(".", 1)[0]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", module):
        return None
    try:
        return importlib.import_module(f"pcluster_ad.lambda_src.{module}")
    except ImportError:
        return None


def replace_safety_findings(plan: Plan) -> list[str]:
    """Every CRUD Invocation replaced create-before-delete (replacement_hazards) runs its OLD delete after the NEW
    create, on what the new one made. Its function's handler module must declare replace-safety: OWNER_KEY and
    invocation_owner (a delete acts only on what its own owner made; lambda_src/directory_admin.py), and the input
    must carry invocation_owner(its name, functionName, qualifier, triggers), which differs between the old and the
    new Invocation of any replacement."""
    out = []
    for inv in plan.of_type(T_INVOCATION):
        if inv.inputs.get("lifecycleScope") != "CRUD" or inv.options.get("deleteBeforeReplace"):
            continue
        fn = _function_named(plan, inv.inputs.get("functionName"))
        module = _handler_module(fn) if fn is not None else None
        key, owner = getattr(module, "OWNER_KEY", None), getattr(module, "invocation_owner", None)
        if not isinstance(key, str) or not callable(owner):
            handler = fn.inputs.get("handler") if fn is not None else inv.inputs.get("functionName")
            out.append(f"{inv.name}: a replacement runs its old delete after the new create, and its handler"
                       f" ({handler}) declares no replace-safety (OWNER_KEY, invocation_owner): the old delete undoes"
                       " the new create")
            continue
        want = owner(inv.name, inv.inputs.get("functionName"), inv.inputs.get("qualifier"), inv.inputs.get("triggers"))
        got = _payload(inv).get(key)
        if got != want:
            out.append(f"{inv.name}: its input's {key!r} is {got!r}, not {want!r}: the old and the new Invocation of a"
                       " replacement would not tell their objects apart, and the old delete would undo the new create")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m pcluster_ad.tools.lifecycle_judge PLAN-DIR[/resources.json]", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    path = Path(args[0])
    path = path / "resources.json" if path.is_dir() else path  # the plan's --out directory, as network_judge takes
    if not path.is_file():
        print(f"error: {path} not found: run `venv/bin/python -m pcluster_ad.tools.plan STACK --out DIR` first",
              file=sys.stderr)
        return 2
    plan = Plan.load(str(path))
    for i, wave in enumerate(plan.destroy_order()):
        print(f"destroy wave {i}: {', '.join(wave)}")
    runs = code_runs(plan)
    findings = judge(plan, runs)
    for run in runs:
        print(f"code: {run.resource} ({'/'.join(run.phases)}): {run.code}; {len(run.needs)} needs")
    by_runner: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        by_runner.setdefault((f.resource, f.code), []).append(f"{f.missing} ({f.what})")
    for (resource, code), missing in by_runner.items():
        print(f"FAIL {resource} ({code}) may run after these are deleted (not among its dependencies):")
        for m in missing:
            print(f"       {m}")
    for line in rerun_findings(plan):
        print(f"FAIL {line}")
    unsafe = replace_safety_findings(plan)
    for line in unsafe:
        print(f"FAIL {line}")
    for line in replacement_hazards(plan):
        print(f"note {line}")
    return 1 if findings or rerun_findings(plan) or unsafe else 0


if __name__ == "__main__":
    if not __package__:  # run as a file in a checkout (`-m pcluster_ad.tools...` needs nothing)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
