"""ParallelCluster's own verdict on a config change: `ConfigPatch(cluster, base, target).check()`, offline.

Runs in the ParallelCluster venv (.venv-pcluster/bin/python). Reads JSON on stdin:

    {"cases": [{"base": YAML, "target": YAML, "running": true|false, "clusterName": "..."}, ...]}

and prints {"results": [{"allowed": bool, "changeSet": [...], "updateValidationErrors": [...]}, ...]}
where the two lists are built the way pcluster's update-cluster API builds them
(api/controllers/cluster_operations_controller.py `_analyze_changes`, `_create_message`). `running` is
whether the compute fleet has running capacity; `runningLoginPools` (default none) the login pools with
nodes running; the head node is taken as running (the launcher never stops it). Used by the table test
(tests/test_update_policy.py) and by the stand-in pcluster (tests/fake_pcluster/pcluster) to answer
update-cluster like the real CLI.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import yaml

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from pcluster.config.config_patch import ConfigPatch
from pcluster.config.update_policy import UpdatePolicy


class _Head:
    state = "running"


class StubCluster:
    """What ConfigPatch and the update policies ask of a cluster."""

    head_node_instance = _Head()

    def __init__(self, name: str, running: bool, login_pools: tuple[str, ...] = ()):
        self.name = name
        self.stack_name = name
        self._running = running
        self._login_pools = set(login_pools)

    def has_running_capacity(self, *_a, **_k) -> bool:
        return self._running

    def has_running_login_nodes(self, pool_name: str | None = None, *_a, **_k) -> bool:
        return pool_name in self._login_pools if pool_name else bool(self._login_pools)


def _message(reason, action) -> str:
    message = reason or None
    if action:
        message = f"{message}. {action}" if message else action
    return message or "Error during update"


def verdict(base: dict, target: dict, running: bool, cluster_name: str = "cluster",
            login_pools: tuple[str, ...] = ()) -> dict:
    patch = ConfigPatch(StubCluster(cluster_name, running, login_pools), base, target)
    allowed, rows = patch.check()
    keys = {key: i for i, key in enumerate(rows[0])}
    change_set, errors = [], []
    for row in rows[1:]:
        parameter = ConfigPatch.build_config_param_path(row[keys["param_path"]], row[keys["parameter"]])
        new = "-" if row[keys["new value"]] is None else str(row[keys["new value"]])
        old = "-" if row[keys["old value"]] is None else str(row[keys["old value"]])
        change = {"parameter": parameter, "requestedValue": new, "currentValue": old}
        change_set.append(change)
        if row[keys["check"]] != UpdatePolicy.CheckResult.SUCCEEDED.value:
            errors.append({
                **change,
                "message": _message(row[keys["reason"]], row[keys["action_needed"]]),
                "updatePolicy": row[keys["update_policy"]],  # not in the API answer; for tests
            })
    return {"allowed": allowed, "changeSet": change_set, "updateValidationErrors": errors}


def main() -> int:
    logging.disable(logging.CRITICAL)
    request = json.load(sys.stdin)
    results = []
    for case in request["cases"]:
        base = yaml.safe_load(case["base"]) if isinstance(case["base"], str) else case["base"]
        target = yaml.safe_load(case["target"]) if isinstance(case["target"], str) else case["target"]
        results.append(verdict(base, target, bool(case.get("running", True)), case.get("clusterName", "cluster"),
                               tuple(case.get("runningLoginPools") or ())))
    json.dump({"results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
