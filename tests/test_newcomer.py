"""A newcomer's first day (issue 11): the offline plan must be trustworthy for every stack file,
names must fit, typos and plaintext secrets are caught, the admin password is an output."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcluster_ad.stack_config import (
    AWS_PROVIDER_KEYS,
    NAME_LIMITS,
    ConfigError,
    parse_settings,
    physical_names,
    settings_from_values,
)
from pcluster_ad.tools.mocks import values_from_stack_file
from tests.conftest import ROOT, stack_doc

EXISTING_NETWORK = {
    "vpcId": "vpc-0123456789abcdef0",
    "publicSubnetId": "subnet-0aaaaaaaaaaaaaaa1",
    "privateSubnetIds": ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"],
}


def run_plan(config_file: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", "--config-file", str(config_file),
                           "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def write_stack(tmp_path: Path, doc: dict, name: str = "mine") -> Path:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def problems(raw: dict, **kw) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, **{"stack": "dev", **kw})
    return [str(p) for p in err.value.problems]


def test_existing_vpc_stack_plans_without_false_problems(tmp_path):
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:network"] = dict(EXISTING_NETWORK)
    result = run_plan(write_stack(tmp_path, doc), tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    config = yaml.safe_load((tmp_path / "out" / "cluster-config.yaml").read_text())
    assert config["HeadNode"]["Networking"]["SubnetId"] == EXISTING_NETWORK["publicSubnetId"]
    assert config["Scheduling"]["SlurmQueues"][0]["Networking"]["SubnetIds"] == EXISTING_NETWORK["privateSubnetIds"]


def test_existing_vpc_problems_found_by_the_program_are_reported_without_traceback(run_stack):
    """Subnets in one AZ are found only by the program (a lookup): still a clean config error."""
    from pcluster_ad.tools.mocks import PlanMocks

    cfg = {"aws:region": "eu-west-1", "pcluster-ad:network": __import__("json").dumps(EXISTING_NETWORK)}
    mocks = PlanMocks.from_config(cfg)
    for subnet in EXISTING_NETWORK["privateSubnetIds"]:
        mocks.subnets[subnet]["availabilityZone"] = "eu-west-1a"
    import pulumi

    with pytest.raises(pulumi.RunError, match="1 problem"):
        run_stack(lambda c: c.__setitem__("pcluster-ad:network", dict(EXISTING_NETWORK)), mocks=mocks)


@pytest.mark.parametrize("stack_file", sorted(p.name for p in ROOT.glob("Pulumi.*.yaml")))
def test_every_shipped_stack_file_plans(tmp_path, stack_file):
    result = run_plan(ROOT / stack_file, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_program_bug_is_reported_without_traceback(tmp_path, monkeypatch):
    """tools.plan catches what the program raises beyond config errors and says it is a bug."""
    from pcluster_ad.tools import plan

    def broken(*_a, **_k):
        raise KeyError("boom")

    monkeypatch.setattr(plan, "_plan", broken)
    rc = plan.main(["--config-file", str(ROOT / "Pulumi.dev.yaml"), "--out", str(tmp_path / "out")])
    assert rc == 1 and not (tmp_path / "out").exists()


def test_namespace_typo_is_an_error_with_the_right_namespace():
    raw = copy.deepcopy(stack_doc("dev")["config"])
    raw["pcluster_ad:network"] = raw.pop("pcluster-ad:network")
    found = problems(raw)
    assert any(p.startswith("pcluster_ad:network: unknown namespace 'pcluster_ad'")
               and "did you mean 'pcluster-ad:network'" in p for p in found), found


def test_unknown_aws_key_is_an_error_known_ones_are_fine():
    raw = copy.deepcopy(stack_doc("dev")["config"])
    raw["aws:profile"] = "research"
    raw["aws:skipMetadataApiCheck"] = "false"
    parse_settings(raw, stack="dev")
    raw["aws:regoin"] = "eu-west-1"
    found = problems(raw)
    assert found == ["aws:regoin: unknown key (did you mean 'aws:region'?)"], found


def test_aws_provider_key_list_matches_the_installed_provider():
    import re

    import pulumi_aws

    source = (Path(pulumi_aws.__file__).parent / "config" / "vars.py").read_text()
    assert set(re.findall(r"__config__\.get\w*\('(\w+)'", source)) == AWS_PROVIDER_KEYS


def test_typo_in_the_program_config_is_reported_by_the_program(run_stack):
    import pulumi

    def edit(config):
        config["pcluster_ad:cluster"] = config["pcluster-ad:cluster"]

    with pytest.raises(pulumi.RunError):
        run_stack(edit)


@pytest.mark.parametrize("region", ["eu-west-1", "ap-southeast-4", "us-gov-west-1"])
def test_longest_allowed_stack_name_deploys_offline_and_one_more_is_refused(run_stack, region):
    """Validation and name building agree: the longest accepted name builds every resource."""
    longest = max(n for n in range(1, 46)
                  if all(len(physical_names("s" * n, region)[k]) <= NAME_LIMITS[k] for k in NAME_LIMITS))

    def edit(config):
        config["aws:region"] = region
        config.get("pcluster-ad:network", {}).pop("availabilityZones", None)

    graph = run_stack(edit, stack_name="s" * longest)
    role = graph.named("join-function-role")
    assert len(role.inputs["name"]) <= 64 and region in role.inputs["name"]
    if longest < 45:
        raw = copy.deepcopy(stack_doc("dev")["config"])
        raw["aws:region"] = region
        found = problems(raw, stack="s" * (longest + 1))
        assert any(p.startswith("stack name:") and f"at most {longest} characters" in p for p in found), found


def test_same_stack_name_in_two_regions_gets_distinct_iam_names():
    east, west = physical_names("prod", "us-east-1"), physical_names("prod", "eu-west-1")
    for kind in ("join_role", "join_invoke_policy"):
        assert east[kind] != west[kind]


@pytest.mark.parametrize("key", ["pcluster-ad:adminPassword", "pcluster-ad:joinPassword"])
def test_plaintext_password_in_a_stack_file_is_refused(tmp_path, key):
    doc = stack_doc("dev")
    doc["config"][key] = "Corr3ct-Horse-Battery"
    result = run_plan(write_stack(tmp_path, doc), tmp_path / "out")
    assert result.returncode == 1
    assert f"{key}: is stored in plaintext" in result.stderr
    assert f"pulumi config set --secret {key}" in result.stderr
    assert "Corr3ct-Horse-Battery" not in result.stderr


def test_encrypted_password_in_a_stack_file_is_accepted():
    doc = stack_doc("dev")
    doc["config"]["pcluster-ad:adminPassword"] = {"secure": "v1:abc"}
    values, secret_keys = values_from_stack_file(doc)
    settings_from_values(values, stack="dev", secret_keys=secret_keys)


def test_plaintext_password_given_to_the_program_is_refused(run_stack):
    import pulumi

    def edit(config):
        config["pcluster-ad:adminPassword"] = "Corr3ct-Horse-Battery"  # not in secret_keys

    with pytest.raises(pulumi.RunError):
        run_stack(edit)
    graph = run_stack(secrets={"pcluster-ad:adminPassword": "Corr3ct-Horse-Battery"})
    assert graph.named("directory-ad")


@pytest.mark.parametrize(("tags", "expected"), [
    ({"cost-center": 5}, "pcluster-ad:tags.cost-center: value must be a string, got 5"),
    ({"aws:owner": "me"}, "pcluster-ad:tags.aws:owner: tag keys starting with 'aws:' are reserved"),
    ({"team": "x" * 257}, "pcluster-ad:tags.team: tag values have at most 256 characters"),
    ({"bad#key": "v"}, "pcluster-ad:tags.bad#key: tag names may hold"),
])
def test_bad_tag_is_reported_by_name(tags, expected):
    raw = copy.deepcopy(stack_doc("dev")["config"])
    raw["pcluster-ad:tags"] = {"ok": "fine", **tags}
    found = problems(raw)
    assert any(p.startswith(expected) for p in found), found
    assert not any(p.startswith("pcluster-ad:tags.ok") for p in found)


def test_generated_admin_password_is_a_secret_output(run_stack):
    graph = run_stack()
    assert graph.outputs["directoryAdminPassword"] == "[secret]"
    existing = run_stack(lambda c: c.update({
        "pcluster-ad:directory": {"type": "Existing", "domainName": "corp.example.com", "dnsIps": ["10.0.0.10"]},
        "pcluster-ad:join": {"user": "joiner"},
    }) or c.pop("pcluster-ad:identity", None), secrets={"pcluster-ad:joinPassword": "Corr3ct-Horse-Battery"})
    assert "directoryAdminPassword" not in existing.outputs


def readme_aws_commands() -> list[list[str]]:
    """Every `aws ds ...` / `aws ds-data ...` command line in the README's first-user section."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    section = text.split("### Your first AD user", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("|"):
                words = shlex.split(part.split(" #", 1)[0], posix=True)
                if words[:1] == ["aws"]:
                    commands.append(words)
    return commands


def test_first_user_aws_commands_match_the_aws_cli_service_models():
    """Each documented command names a real operation and gives every required parameter by its
    CLI spelling; a typo in an option or an operation fails here."""
    import botocore.session
    from botocore import xform_name

    commands = readme_aws_commands()
    operations = {(c[1], c[2]) for c in commands}
    assert {("ds-data", "create-user"), ("ds-data", "create-group"), ("ds-data", "add-group-member"),
            ("ds", "enable-directory-data-access"), ("ds", "reset-user-password")} <= operations, operations
    session = botocore.session.get_session()
    for words in commands:
        service, operation = words[1], words[2]
        model = session.get_service_model(service)
        by_cli_name = {xform_name(op, "-"): op for op in model.operation_names}
        assert operation in by_cli_name, words
        shape = model.operation_model(by_cli_name[operation]).input_shape
        options = {w[2:] for w in words[3:] if w.startswith("--")}
        members = {xform_name(m, "-"): m for m in shape.members}
        if "cli-input-json" in options:  # the JSON on stdin carries the members (checked below)
            continue
        assert options <= set(members), (words, sorted(members))
        missing = [m for m in shape.required_members if xform_name(m, "-") not in options]
        assert not missing, (words, missing)


def test_first_user_password_json_matches_reset_user_password():
    import json
    import re

    import botocore.session

    section = (ROOT / "README.md").read_text().split("### Your first AD user", 1)[1]
    template = re.search(r"printf '(\{\"DirectoryId\".*?\})'", section).group(1)
    document = json.loads(template.replace("%s", "x"))
    shape = botocore.session.get_session().get_service_model("ds").operation_model("ResetUserPassword").input_shape
    assert set(document) == set(shape.members) >= set(shape.required_members)


def test_newcomer_path_on_the_dev_sample_offline(tmp_path):
    """README's first day, offline: the dev sample plans, the admin password the README tells you to
    read is an output of that plan and masked, and the first-user commands use outputs that exist."""
    readme = (ROOT / "README.md").read_text()
    assert "pulumi stack output --show-secrets directoryAdminPassword" in readme
    result = run_plan(ROOT / "Pulumi.dev.yaml", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert 'directoryAdminPassword: "[secret]"' in result.stdout
    section = readme.split("### Your first AD user", 1)[1].split("\n## ", 1)[0]
    import re

    used = set(re.findall(r"pulumi stack output (?:--show-secrets )?(\w+)", section))
    planned = set(re.findall(r"^  (\w+): ", result.stdout, flags=re.M))
    assert used and used <= planned, (used, planned)
