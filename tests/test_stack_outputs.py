"""The stack outputs a user needs after deploy (issue 19 item 9): the head node's instance id, the ParallelCluster
version, the cluster's CloudWatch log group and the region, from the launcher's final line, under Pulumi's mocks;
and the README's list of outputs against what the program exports."""

from __future__ import annotations

import json
import re

from pcluster_ad.tools.mocks import PlanMocks
from tests.conftest import ROOT

GROUP = "/aws/parallelcluster/hpc-dev-202609011200"
FINAL_LINE = {"clusterName": "hpc-dev", "status": "CREATE_COMPLETE", "headNodePublicIp": "203.0.113.10",
              "headNodePrivateIp": "10.0.0.10", "loginNodesAddress": None, "headNodeInstanceId": "i-0123456789abcdef0",
              "pclusterVersion": "3.16.1", "clusterLogGroup": GROUP}


class DeployedMocks(PlanMocks):
    """The plan's mocks, except that the cluster command answers as the launcher does after `pulumi up`: progress
    lines, then its final JSON line (launcher/cli.py)."""

    def __init__(self, final: dict, **kwargs):
        super().__init__(**kwargs)
        self.final = final

    def new_resource(self, args):
        resource_id, state = super().new_resource(args)
        if args.typ == "command:local:Command" and args.name == "cluster-pcluster":
            state["stdout"] = "launcher [0s] hpc-dev: create done\n" + json.dumps(self.final) + "\n"
        return resource_id, state


def test_after_deploy_the_outputs_name_instance_version_log_group_and_region(run_stack):
    outputs = run_stack(mocks=DeployedMocks(FINAL_LINE, region="eu-west-1")).outputs
    assert outputs["headNodeInstanceId"] == "i-0123456789abcdef0"
    assert outputs["pclusterVersion"] == "3.16.1"
    assert outputs["clusterLogGroup"] == GROUP
    assert outputs["region"] == "eu-west-1"
    assert outputs["sshCommand"] == "ssh <ad-user>@203.0.113.10"


def test_the_version_is_the_clusters_own(run_stack):
    """A cluster adopted from another ParallelCluster version says so (update-cluster works only with that one)."""
    outputs = run_stack(mocks=DeployedMocks({**FINAL_LINE, "pclusterVersion": "3.15.0"})).outputs
    assert outputs["pclusterVersion"] == "3.15.0"


def test_before_deploy_the_version_is_the_configured_one_and_the_rest_unknown(run_stack):
    def edit(config):
        config["pcluster-ad:cluster"]["pclusterVersion"] = "3.15.0"

    outputs = run_stack(edit).outputs
    assert outputs["pclusterVersion"] == "3.15.0"
    assert outputs["headNodeInstanceId"] is None and outputs["clusterLogGroup"] is None
    assert outputs["region"] == "eu-west-1"


def test_the_offline_plan_writes_the_outputs(tmp_path):
    from pcluster_ad.tools import plan

    assert plan.main(["dev", "--out", str(tmp_path)]) == 0
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    assert {k: outputs[k] for k in ("clusterName", "pclusterVersion", "region", "headNodeInstanceId",
                                    "clusterLogGroup")} == {
        "clusterName": "hpc-dev", "pclusterVersion": (ROOT / "pcluster_version.txt").read_text().strip(),
        "region": "eu-west-1", "headNodeInstanceId": None, "clusterLogGroup": None}
    assert outputs["directoryAdminPassword"] == "[secret]"
    assert "clusterConfig" not in outputs  # its own file, cluster-config.yaml


def test_readme_lists_every_output_the_program_exports(run_stack):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n### Stack outputs\n"):]
    section = section[:section.index("\n## ", 1)]
    first_cells = re.findall(r"^\| (`[^|]+) \|", section, re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`(\w+)`", cell)}
    exported = set(run_stack(mocks=DeployedMocks(FINAL_LINE)).outputs)
    assert exported <= listed, sorted(exported - listed)
    assert listed - exported == {"previousDhcpOptionsId"}  # an adopted VPC's only; no stale row
    assert {"headNodeInstanceId", "pclusterVersion", "clusterLogGroup", "region"} <= listed
