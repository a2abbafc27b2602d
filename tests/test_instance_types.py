"""Instance types (issue 19 item 2a): a type that exists in no region is refused OFFLINE, by the stack config check
(so by the offline plan, deploy.sh and `pulumi up` alike), naming the key and the closest real types. The list is
EC2's own, botocore's EC2 model (shape InstanceType); it is checked here against the data ParallelCluster's full
validation uses (moto's per-region offerings, in the ParallelCluster venv), so the offline check never refuses a type
that validation would accept."""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import botocore
import pytest
import yaml

from pcluster_ad.stack_config import ConfigError, ec2_instance_types, instance_type_problem, parse_settings
from pcluster_ad.tools import plan
from pcluster_ad.tools.pcluster_schema import full_validation_python
from tests.conftest import stack_doc

TYPO = "c5.larg"


def dev_raw() -> dict[str, Any]:
    return copy.deepcopy(stack_doc("dev")["config"])


def _queue_flat(raw, value):
    raw["pcluster-ad:cluster"]["queues"][0]["instanceType"] = value


def _compute_resources(raw, value):
    queue = raw["pcluster-ad:cluster"]["queues"][0]
    for k in ("instanceType", "minCount", "maxCount"):
        queue.pop(k)
    queue["computeResources"] = [{"instanceType": "c5.xlarge", "maxCount": 2}, {"instanceType": value, "maxCount": 4}]


def _head(raw, value):
    raw["pcluster-ad:cluster"]["headNode"]["instanceType"] = value


def _login(raw, value):
    raw["pcluster-ad:cluster"]["loginNodes"] = {"count": 1, "instanceType": value}


PLACES = [(_queue_flat, "queues[0].instanceType"), (_compute_resources, "queues[0].computeResources[1].instanceType"),
          (_head, "headNode.instanceType"), (_login, "loginNodes.instanceType")]


def problems_with(edit, value: str) -> list[str]:
    raw = dev_raw()
    edit(raw, value)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, stack="dev")
    return [str(p) for p in err.value.problems]


@pytest.mark.parametrize("edit, key", PLACES, ids=[k for _, k in PLACES])
def test_a_misspelt_instance_type_is_refused_naming_the_key_and_the_real_one(edit, key):
    problems = problems_with(edit, TYPO)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert problem.startswith(f"pcluster-ad:cluster.{key}: 'c5.larg' is not an EC2 instance type in any region: c5"
                              " has no size 'larg': did you mean 'c5.large'"), problem
    assert f"botocore {botocore.__version__}" in problem  # where the list comes from, and how to get a newer one


@pytest.mark.parametrize("value, needle", [
    ("c5.16xlarge", "c5 has no size '16xlarge': did you mean 'c5.18xlarge' or 'c5.12xlarge'?"),
    ("cn5.large", "there is no instance family 'cn5': did you mean 'c5.large' or 'c5n.large'"),
    ("C5.Large", "'C5.Large' is not an EC2 instance type such as c5.large: did you mean 'c5.large'?"),
    ("c5.large ", "did you mean 'c5.large'?"),
    ("large", "'large' is not an EC2 instance type such as c5.large"),
])
def test_what_the_message_suggests(value, needle):
    problems = problems_with(_queue_flat, value)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("value", ["c5.large", "hpc7g.16xlarge", "u-12tb1.112xlarge", "m7i-flex.large",
                                   "c6in.metal", "cc2.8xlarge"])
def test_real_types_pass_also_previous_generation_ones(value):
    assert instance_type_problem(value) is None


def test_the_list_is_botocores_ec2_model():
    """The installed botocore's own file, not a copy: shape InstanceType of EC2's newest API version."""
    data = Path(botocore.__file__).parent / "data" / "ec2"
    newest = sorted(p for p in data.iterdir() if p.is_dir())[-1]
    model = json.loads(gzip.decompress((newest / "service-2.json.gz").read_bytes()))
    assert ec2_instance_types() == frozenset(model["shapes"]["InstanceType"]["enum"])
    assert len(ec2_instance_types()) > 1000


def test_the_offline_plan_refuses_it_and_writes_nothing(tmp_path, capsys):
    doc = stack_doc("dev")
    _queue_flat(doc["config"], TYPO)
    config_file = tmp_path / "Pulumi.typo.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    assert plan.main(["--config-file", str(config_file), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "pcluster-ad:cluster.queues[0].instanceType: 'c5.larg' is not an EC2 instance type" in err
    assert "Nothing was written." in err and not (tmp_path / "out").exists()


def test_every_type_the_full_validation_offers_passes_offline():
    """ParallelCluster's full validation (tools/validate_cluster_full.py) takes a region's types from moto's
    offerings; a type it offers somewhere but botocore did not know would be refused offline although it deploys.
    Measured: botocore's list is the larger one (it keeps retired types, which only that validation refuses)."""
    code = ("import gzip, json, pathlib, moto; d = pathlib.Path(moto.__file__).parent / 'ec2' / 'resources' / "
            "'instance_type_offerings' / 'region'; print(json.dumps(sorted({o['InstanceType'] for f in d.iterdir() "
            "for o in json.loads(gzip.decompress(f.read_bytes()))})))")
    proc = subprocess.run([str(full_validation_python()), "-c", code], capture_output=True, text=True, check=True,
                          timeout=120)
    offered = set(json.loads(proc.stdout))
    assert len(offered) > 1000
    assert sorted(offered - ec2_instance_types()) == []
    retired = ec2_instance_types() - offered
    print(f"\nbotocore {botocore.__version__}: {len(ec2_instance_types())} types; moto offers {len(offered)} in some "
          f"region; offline-only ({len(retired)}): {sorted(retired)[:8]}...")
    assert "cc2.8xlarge" in retired  # a retired type: accepted offline, refused by the full validation

