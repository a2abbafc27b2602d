"""Snapshot of ParallelCluster's update policy per config path; runs in the ParallelCluster venv.

    .venv-pcluster/bin/python tools/update_policy_snapshot.py            # rewrite tools/update_policy.json
    .venv-pcluster/bin/python tools/update_policy_snapshot.py --stdout   # print it instead

Walks ClusterSchema the way pcluster.config.config_patch.ConfigPatch does (a field's policy is its
`update_policy` metadata, UNSUPPORTED when missing; list items are matched by their `update_key`) and
classifies every policy by running ITS OWN check() on a change at that path against a stub cluster:

  replace     refused even with the compute and login fleets stopped (the head node keeps running: the
              launcher never stops it): only a new cluster applies it
  fleet-stop  accepted only with the compute fleet stopped (QueueUpdateStrategy DRAIN set)
  live        accepted with the fleet running (QueueUpdateStrategy DRAIN set)
  value-dependent  the check reads the values themselves (e.g. SharedStorage's StorageType)

Lists get the class of adding and of removing an item. The project venv cannot import pcluster, so the
Pulumi program reads the JSON (update_policy.py); tests/test_update_policy.py regenerates it and fails when
it differs, so an upgrade of ParallelCluster cannot drift silently.

Known value-dependent rules the path walk cannot see (the check runs on placeholder values): the /home
SharedStorage item cannot be added or removed (our config always has exactly one, with a fixed Name), and
EXTRA_CHEF_ATTRIBUTES / MANAGED_FSX / MANAGED_PLACEMENT_GROUP depend on values we never render.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")  # pcluster reads a region at import; not an ADC one

from pcluster.config.config_patch import Change
from pcluster.config.update_policy import UpdatePolicy
from pcluster.schemas.cluster_schema import ClusterSchema

OUT = Path(__file__).resolve().parent / "update_policy.json"


class _Head:
    state = "running"


class _Cluster:
    """ConfigPatch's view of a cluster: only what the update policies ask."""

    name = "snapshot"
    stack_name = "snapshot"
    head_node_instance = _Head()

    def __init__(self, running: bool):
        self._running = running

    def has_running_capacity(self, *_a, **_k) -> bool:
        return self._running

    def has_running_login_nodes(self, *_a, **_k) -> bool:
        return False


class _Patch:
    def __init__(self, running: bool):
        self.cluster = _Cluster(running)
        self.condition_results: dict = {}
        self.changes: list = []
        config = {"Scheduling": {"Scheduler": "slurm", "SlurmSettings": {"QueueUpdateStrategy": "DRAIN"}}}
        self.base_config = config
        self.target_config = config


def _passes(policy: UpdatePolicy, change: Change, running: bool) -> bool:
    patch = _Patch(running)
    patch.changes = [change]
    result, *_ = policy.check(change, patch)
    return result == UpdatePolicy.CheckResult.SUCCEEDED


def classify(policy: UpdatePolicy, change: Change) -> str:
    try:
        if not _passes(policy, change, running=False):
            return "replace"
        return "live" if _passes(policy, change, running=True) else "fleet-stop"
    except (AttributeError, TypeError, ValueError, KeyError):
        # The check reads the real values (e.g. a SharedStorage item's StorageType): it cannot be judged by
        # path; tests/test_update_policy.py covers the values this project renders.
        return "value-dependent"


def _change(path: list[str], key: str, policy: UpdatePolicy, old, new, is_list: bool) -> Change:
    return Change(path, key, old, new, policy, is_list)


def walk(schema, path: list[str], shown: str, out: dict) -> None:
    for field in schema.declared_fields.values():
        policy = field.metadata.get("update_policy", UpdatePolicy.UNSUPPORTED)
        key = field.data_key
        nested = hasattr(field, "nested")
        many = bool(getattr(field, "many", False))
        name = f"{shown}.{key}" if shown else key
        if nested and many:
            # ConfigPatch paths name list items "Key[value]"; a placeholder value stands for any item.
            item_path = [*path, f"{key}[item]"]
            entry = {
                "policy": policy.name,
                "updateKey": field.metadata.get("update_key"),
                "add": classify(policy, _change(path, key, policy, None, {}, True)),
                "remove": classify(policy, _change(path, key, policy, {}, None, True)),
            }
            out[f"{name}[]"] = entry
            walk(field.schema, item_path, f"{name}[]", out)
        elif nested:
            entry = {"policy": policy.name, "section": True}
            if policy is not UpdatePolicy.IGNORED:  # IGNORED sections are compared field by field
                entry["add"] = classify(policy, _change(path, key, policy, "-", {"x": 1}, False))
                entry["remove"] = classify(policy, _change(path, key, policy, {"x": 1}, "-", False))
            out[name] = entry
            walk(field.schema, [*path, key], name, out)
        else:
            # 2 -> 1: for counts the worst case (a decrease); other checks do not look at the values.
            out[name] = {"policy": policy.name, "change": classify(policy, _change(path, key, policy, 2, 1, False))}


def snapshot() -> dict:
    from importlib.metadata import version

    fields: dict = {}
    logging.disable(logging.CRITICAL)  # the EXTRA_CHEF_ATTRIBUTES check logs about the placeholder values
    walk(ClusterSchema(cluster_name="snapshot"), [], "", fields)
    return {
        "generatedBy": "tools/update_policy_snapshot.py",
        "pclusterVersion": version("aws-parallelcluster"),
        "classes": {
            "replace": "refused even with the compute and login fleets stopped: needs a new cluster",
            "fleet-stop": "accepted only with the compute fleet stopped (QueueUpdateStrategy DRAIN set)",
            "live": "accepted with the compute fleet running (QueueUpdateStrategy DRAIN set)",
            "value-dependent": "the check reads the values; not judged by path (not a replacement here)",
        },
        "fields": fields,
    }


def render() -> str:
    return json.dumps(snapshot(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--stdout" in argv:
        sys.stdout.write(text)
    else:
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUT} ({len(json.loads(text)['fields'])} fields)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
