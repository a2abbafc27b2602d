"""The join function URL baked into the uploaded join script, and the fixed bootstrap bucket name (issue 9,
finding 4: nothing that can change without a real change may reach the head node's custom actions)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from pcluster_ad.components.bootstrap_scripts import (
    BAKED_URL_LINE,
    BAKED_VPC_CIDR_LINE,
    bake_function_url,
    bake_vpc_cidr,
    bootstrap_bucket_name,
)
from tests.conftest import ROOT

SCRIPT = ROOT / "bootstrap" / "join-domain.sh"
URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws/"
S3_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def _run(script_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script_path), *args], capture_output=True, text=True, timeout=60,
                          check=False, env={"PATH": "/usr/bin:/bin", "PCLUSTER_AD_LOG": "/dev/null"})


def test_the_script_has_exactly_one_marked_default_line():
    assert SCRIPT.read_text().count(BAKED_URL_LINE + "\n") == 1


def test_baked_copy_uses_the_url_and_the_flag_overrides_it(tmp_path):
    baked = tmp_path / "join-domain.sh"
    baked.write_text(bake_function_url(SCRIPT.read_text(), URL))
    assert f"BAKED_FUNCTION_URL='{URL}'\n" in baked.read_text()
    # Argument checks run in order URL, region: a region error means the baked URL was accepted.
    result = _run(baked, "--region", "not-a-region")
    assert result.returncode == 2 and "--region is not an AWS region name" in result.stderr, result.stderr
    # --function-url still wins, and is still checked.
    result = _run(baked, "--function-url", "http://203.0.113.5/", "--region", "eu-west-1")
    assert result.returncode == 2 and "must be an https:// URL" in result.stderr, result.stderr
    # The repo copy has no URL: the flag is required there.
    result = _run(SCRIPT, "--region", "eu-west-1")
    assert result.returncode == 2 and "missing argument --function-url" in result.stderr, result.stderr


@pytest.mark.parametrize("url", ["https://x.example/'; rm -rf / #", "http://plain.example/", "https://a b/",
                                 "https://x.example/$(id)"])
def test_bake_refuses_urls_the_shell_could_expand(url):
    with pytest.raises(ValueError, match="not a plain https:// URL"):
        bake_function_url(SCRIPT.read_text(), url)


def test_bake_refuses_a_script_without_the_marker():
    with pytest.raises(ValueError, match="exactly once"):
        bake_function_url("#!/bin/bash\necho hi\n", URL)


def test_baked_object_follows_the_url_under_the_same_key(run_stack):
    from tests.test_update_policy import NEW_URL, _Recreated

    before = run_stack().named("bootstrap-join-domain").inputs
    after = run_stack(mocks=_Recreated({("join-function-url", "functionUrl"): NEW_URL}, region="eu-west-1")).named(
        "bootstrap-join-domain").inputs
    assert before["key"] == after["key"] == "bootstrap/join-domain.sh"
    assert "BAKED_FUNCTION_URL='<after-deploy:join-function-url.functionUrl>'" in before["content"]
    assert f"BAKED_FUNCTION_URL='{NEW_URL}'" in after["content"]


@pytest.mark.parametrize("stack", ["dev", "prod", "Team_A.test", "x" * 80, "-weird-"])
@pytest.mark.parametrize("region", ["eu-west-1", "ap-southeast-2", "us-gov-west-1"])
def test_bucket_name_is_valid_stable_and_distinct(stack, region):
    name = bootstrap_bucket_name("123456789012", region, stack)
    assert S3_NAME.match(name) and len(name) <= 63 and ".." not in name, name
    assert name == bootstrap_bucket_name("123456789012", region, stack)  # same after a re-creation
    assert name != bootstrap_bucket_name("123456789013", region, stack)
    assert name != bootstrap_bucket_name("123456789012", region, stack + "2")


def test_bucket_name_refuses_bad_input():
    with pytest.raises(ValueError, match="account id"):
        bootstrap_bucket_name("12345", "eu-west-1", "dev")
    with pytest.raises(ValueError, match="region"):
        bootstrap_bucket_name("123456789012", "Europe", "dev")


def test_stack_bucket_has_the_fixed_name(run_stack):
    bucket = run_stack().named("bootstrap-bucket")
    assert bucket.inputs["bucket"] == "pcluster-ad-dev-<after-deploy:account-id>-eu-west-1"
    assert "bucketPrefix" not in bucket.inputs
    assert bucket.options["deleteBeforeReplace"] is True


# --- the VPC CIDR (issue 16, part 3): the ssh keys made for MPI open an account only from inside the VPC ----------


def test_the_script_has_exactly_one_marked_vpc_cidr_line():
    assert SCRIPT.read_text().count(BAKED_VPC_CIDR_LINE + "\n") == 1


def test_baked_vpc_cidr_is_accepted_by_the_script_and_the_flag_still_checked(tmp_path):
    baked = tmp_path / "join-domain.sh"
    baked.write_text(bake_vpc_cidr(bake_function_url(SCRIPT.read_text(), URL), "10.20.0.0/16"))
    assert "BAKED_VPC_CIDR='10.20.0.0/16'\n" in baked.read_text()
    # The VPC CIDR is checked before --timeout: a --timeout error means the baked CIDR was accepted.
    result = _run(baked, "--region", "eu-west-1", "--timeout", "soon")
    assert result.returncode == 2 and "argument --timeout" in result.stderr, result.stderr
    assert "argument --vpc-cidr" not in result.stderr, result.stderr
    result = _run(baked, "--region", "eu-west-1", "--vpc-cidr", "10.20.0.1/16")
    assert result.returncode == 2 and "argument --vpc-cidr must be an IPv4 CIDR block" in result.stderr, \
        result.stderr


@pytest.mark.parametrize("cidr", ["10.0.0.1/16", "10.0.0.0/33", "010.0.0.0/8", "10.0.0.0", "fd00::/8",
                                  "10.0.0.0/16'; id; '", " 10.0.0.0/16", "<after-deploy:network.cidr>"])
def test_bake_refuses_anything_but_a_canonical_ipv4_network(cidr):
    with pytest.raises(ValueError, match="VPC CIDR"):
        bake_vpc_cidr(SCRIPT.read_text(), cidr)


def test_no_vpc_cidr_leaves_the_line_and_a_script_without_it_is_refused():
    text = SCRIPT.read_text()
    assert bake_vpc_cidr(text, None) == text == bake_vpc_cidr(text, "")
    with pytest.raises(ValueError, match="exactly once"):
        bake_vpc_cidr("#!/bin/bash\necho hi\n", "10.0.0.0/16")


def test_stack_bakes_the_vpc_cidr_it_creates(run_stack):
    content = run_stack(lambda c: c["pcluster-ad:network"].__setitem__("cidr", "10.42.0.0/16")).named(
        "bootstrap-join-domain").inputs["content"]
    assert "BAKED_VPC_CIDR='10.42.0.0/16'\n" in content
    assert "BAKED_FUNCTION_URL='<after-deploy:join-function-url.functionUrl>'" in content  # the rest still baked


def test_stack_in_an_adopted_vpc_bakes_no_cidr(run_stack):
    from pcluster_ad.tools.mocks import PlanMocks

    subnets = {"subnet-0aaaaaaaaaaaaaaaa": {"availabilityZone": "eu-west-1a", "vpcId": "vpc-0123456789abcdef0"},
               "subnet-0bbbbbbbbbbbbbbbb": {"availabilityZone": "eu-west-1b", "vpcId": "vpc-0123456789abcdef0"}}
    content = run_stack(lambda c: c.__setitem__("pcluster-ad:network", {
        "vpcId": "vpc-0123456789abcdef0", "publicSubnetId": "subnet-0cccccccccccccccc",
        "privateSubnetIds": list(subnets)}), mocks=PlanMocks(subnets=subnets)).named(
        "bootstrap-join-domain").inputs["content"]
    assert BAKED_VPC_CIDR_LINE + "\n" in content  # the node logs that its keys are not limited to the VPC


def test_stack_bakes_its_id_mode_and_uploads_the_remap_tool(run_stack):
    """pcluster-ad:identity.mode reaches nodes through the uploaded script (issue 18); the migration tool is uploaded
    beside it, unchanged, and ParallelCluster runs neither it nor anything else new."""
    default = run_stack()  # the dev sample: rfc2307
    content = default.named("bootstrap-join-domain").inputs["content"]
    assert "BAKED_ID_MODE=rfc2307\n" in content
    idmap = run_stack(lambda c: c.__setitem__("pcluster-ad:identity", {"mode": "idmap"}))
    assert "BAKED_ID_MODE=idmap\n" in idmap.named("bootstrap-join-domain").inputs["content"]
    tool = default.named("bootstrap-remap-home-owners").inputs
    assert tool["key"] == "bootstrap/remap-home-owners.py" and tool["contentType"] == "text/x-python"
    assert tool["sourceHash"] == hashlib.sha256((SCRIPT.parent / "remap-home-owners.py").read_bytes()).hexdigest()
    assert "remap-home-owners" not in json.dumps(default.named("cluster-pcluster").inputs["stdin"])
