"""Issue 19 item 4: the offline plan cannot ask AWS about an adopted VPC's subnets, so it assumes their AZs and
routes (tools/mocks.py PlanMocks.from_config); it says so, naming each subnet and the AZ it assumed."""

from __future__ import annotations

import yaml

from pcluster_ad.tools import plan
from pcluster_ad.tools.mocks import PlanMocks
from tests.conftest import ROOT

EXISTING_NETWORK = {"vpcId": "vpc-0123456789abcdef0", "publicSubnetId": "subnet-0aaaaaaaaaaaaaaa1",
                    "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"]}


def _plan_stderr(tmp_path, capsys, network=None) -> str:
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    if network:
        doc["config"]["pcluster-ad:network"] = network
    config_file = tmp_path / "Pulumi.dev.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    capsys.readouterr()
    assert plan.main(["--config-file", str(config_file), "--out", str(tmp_path / "out")]) == 0
    return capsys.readouterr().err


def test_the_plan_says_which_subnet_azs_it_assumed(tmp_path, capsys):
    err = _plan_stderr(tmp_path, capsys, dict(EXISTING_NETWORK))
    (line,) = [x for x in err.splitlines() if "ASSUMED" in x]
    assert line.startswith("warning: pcluster-ad:network: the offline plan cannot look up vpc-0123456789abcdef0's")
    assert ("privateSubnetIds subnet-0bbbbbbbbbbbbbbb1 in eu-west-1a, subnet-0bbbbbbbbbbbbbbb2 in eu-west-1b, "
            "publicSubnetId subnet-0aaaaaaaaaaaaaaa1 in eu-west-1a") in line
    assert "Not checked offline: the subnets' real AZs and VPC" in line and "pulumi preview" in line


def test_a_created_vpc_assumes_nothing(tmp_path, capsys):
    assert "ASSUMED" not in _plan_stderr(tmp_path, capsys)


def test_subnets_the_caller_gives_are_not_assumptions():
    """Tests (and embedders) that pass the subnets' real answers get no warning: nothing was made up."""
    known = {"subnet-0bbbbbbbbbbbbbbb1": {"availabilityZone": "eu-west-1a", "vpcId": "vpc-0123456789abcdef0"}}
    assert PlanMocks(subnets=known).assumption_warning() is None
    config = {"aws:region": "us-east-1", "pcluster-ad:network": '{"vpcId": "vpc-0123456789abcdef0", '
              '"publicSubnetId": "subnet-0aaaaaaaaaaaaaaa1", "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1"]}'}
    assert "subnet-0bbbbbbbbbbbbbbb1 in us-east-1a" in PlanMocks.from_config(config).assumption_warning()
