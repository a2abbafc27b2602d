"""The Automation API module: config handling, validation first, and the inline program under mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pcluster_ad import automation
from pcluster_ad.stack_config import ConfigError
from pcluster_ad.tools.mocks import PlanMocks, mask_secrets, run_program
from tests import pulumi_standin
from tests.conftest import ROOT, stack_doc

PASSWORD = "Autom4tion-Secret-Pw"


def dev_config() -> dict:
    return dict(stack_doc("dev")["config"])


def test_engine_config_encodes_objects_and_marks_secrets():
    cfg = automation.engine_config({"aws:region": "eu-west-1", "pcluster-ad:network": {"cidr": "10.1.0.0/16"},
                                    "pcluster-ad:directory": {"protect": True}},
                                   secrets={"pcluster-ad:adminPassword": PASSWORD})
    assert cfg["aws:region"] == ("eu-west-1", False)
    assert json.loads(cfg["pcluster-ad:network"][0]) == {"cidr": "10.1.0.0/16"}
    assert cfg["pcluster-ad:adminPassword"] == (PASSWORD, True)


def test_the_stack_file_written_reads_back_as_the_validated_values(tmp_path):
    """write_config's YAML, read as the engine reads it (tools/stack_file.py), gives the program what validate()
    checked: PyYAML's safe_dump left 0o17 and 08 unquoted, which the engine reads as the numbers 15 and 8."""
    from types import SimpleNamespace

    from pcluster_ad.tools.stack_file import read

    config = dev_config()
    config["pcluster-ad:groups"] = [{"name": "0o17", "description": "08"}]
    automation.validate(config)
    automation.write_config(SimpleNamespace(work_dir=str(tmp_path)), "dev", config)
    engine = read((tmp_path / "Pulumi.dev.yaml").read_text()).config
    assert json.loads(engine["pcluster-ad:groups"]) == [{"name": "0o17", "description": "08"}]
    assert engine == {key: text for key, (text, _) in automation.engine_config(config).items()}


def test_secrets_must_not_travel_in_plain_config():
    with pytest.raises(ValueError, match="pcluster-ad:adminPassword is a secret"):
        automation.engine_config({"pcluster-ad:adminPassword": PASSWORD})
    with pytest.raises(ValueError, match="not a secret key"):
        automation.engine_config({}, secrets={"pcluster-ad:cluster": "x"})
    with pytest.raises(ValueError, match="pcluster-ad:adminPassword contains a line break"):
        automation.up("dev", dev_config(), secrets={"pcluster-ad:adminPassword": PASSWORD + "\n"})


def test_invalid_config_fails_before_any_stack_is_touched(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # not even the CLI is looked up
    config = dev_config()
    config["pcluster-ad:cluster"] = {**config["pcluster-ad:cluster"], "name": "bad_name"}
    with pytest.raises(ConfigError) as err:
        automation.up("dev", config)
    assert any("cluster.name" in str(p) for p in err.value.problems)


@pytest.mark.parametrize("call", [
    lambda: automation.preview("dev", dev_config()),
    lambda: automation.up("dev", dev_config()),
    lambda: automation.outputs("dev"),
    lambda: automation.destroy("dev"),
    lambda: automation.workspace("dev"),
], ids=["preview", "up", "outputs", "destroy", "workspace"])
def test_missing_pulumi_cli_is_explained_the_same_way_everywhere(monkeypatch, tmp_path, call):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("PCLUSTER_AD_WORKSPACES", str(tmp_path / "ws"))
    with pytest.raises(automation.PulumiCliMissing) as err:
        call()
    assert str(err.value) == automation.CLI_MISSING
    assert "https://www.pulumi.com/docs/install/" in str(err.value) and "automation.plan(" in str(err.value)


def test_a_bad_secret_fails_validation_before_the_cli_is_looked_up(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError) as err:
        automation.up("dev", dev_config(), secrets={"pcluster-ad:adminPassword": "short"})
    assert any("adminPassword" in str(p) for p in err.value.problems)


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """The recording stand-in `pulumi` first on PATH; workspaces under tmp_path."""
    pulumi_standin.install(tmp_path / "bin")
    for key, value in pulumi_standin.env(tmp_path, tmp_path / "bin").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PCLUSTER_AD_WORKSPACES", str(tmp_path / "ws"))
    return tmp_path


@pytest.fixture
def validated(monkeypatch) -> list[tuple]:
    """ParallelCluster's full validation recorded instead of run (10-15 s a call), for the tests about the
    workspace; the tests below that are about the validation run the real one."""
    seen: list[tuple] = []

    def record(name, config, secrets=None):
        seen.append((name, dict(config), dict(secrets or {})))
        return {"ok": True, "failures": []}

    monkeypatch.setattr(automation, "full_validation", record)
    return seen


def tracked_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_up_deploys_exactly_the_validated_config_from_its_own_workspace(standin):
    before = tracked_state()
    sample = (ROOT / "Pulumi.dev.yaml").read_bytes()
    config = {"aws:region": "us-west-2",
              "pcluster-ad:directory": {"type": "SimpleAD", "domainName": "corp.example", "shortName": "CORP"},
              "pcluster-ad:cluster": {"name": "hpc-embed", "allowedSshCidr": "203.0.113.0/24",
                                      "queues": [{"name": "cpu", "instanceType": "c5.large"}]}}
    automation.up("dev", config, secrets={"pcluster-ad:adminPassword": PASSWORD}, on_output=lambda _line: None)
    calls = pulumi_standin.calls(standin)
    work_dir = standin / "ws" / "dev"
    # Every command runs in the stack's own workspace, never in the checkout (`pulumi version` reads no files).
    assert {c["cwd"] for c in calls if pulumi_standin.words(c)[0] != "version"} == {str(work_dir)}
    up = [c for c in calls if pulumi_standin.words(c)[0] == "up"]
    assert len(up) == 1
    deployed = up[0]["stack_file"]
    assert {k: v for k, v in deployed["config"].items() if k != "pcluster-ad:adminPassword"} == config
    assert set(deployed["config"]["pcluster-ad:adminPassword"]) == {"secure"}
    assert deployed["encryptionsalt"] == "v1:standin-salt"  # the CLI's secrets-provider state is kept
    secret_calls = [c for c in calls if c.get("stdin") is not None]
    assert [(pulumi_standin.words(c)[-1], c["stdin"]) for c in secret_calls] == [
        ("pcluster-ad:adminPassword", PASSWORD)]
    assert not any(PASSWORD in arg for c in calls for arg in c["argv"])  # stdin only, never argv
    assert PASSWORD not in (work_dir / "Pulumi.dev.yaml").read_text()
    project = yaml.safe_load((work_dir / "Pulumi.yaml").read_text())
    assert project["name"] == "pcluster-ad" and "backend" not in project
    assert tracked_state() == before and (ROOT / "Pulumi.dev.yaml").read_bytes() == sample


def test_a_second_run_replaces_the_config_instead_of_merging(standin, validated):
    first = dev_config()
    first["pcluster-ad:tags"] = {"team": "hpc"}
    automation.up("dev", first, secrets={"pcluster-ad:joinPassword": PASSWORD}, on_output=lambda _line: None)
    second = dev_config()
    second.pop("pcluster-ad:tags", None)
    automation.up("dev", second, on_output=lambda _line: None)
    up = [c for c in pulumi_standin.calls(standin) if pulumi_standin.words(c)[0] == "up"]
    assert up[-1]["stack_file"]["config"] == second  # no tags, no joinPassword left over from the first run
    assert "pcluster-ad:tags" in up[0]["stack_file"]["config"]
    assert [(c, s) for _, c, s in validated] == [(first, {"pcluster-ad:joinPassword": PASSWORD}), (second, {})]


def test_outputs_and_destroy_use_the_same_workspace(standin, validated):
    automation.up("dev", dev_config(), on_output=lambda _line: None)
    assert automation.outputs("dev") == {"sshCommand": "ssh <ad-user>@203.0.113.10",
                                         "directoryAdminPassword": "[secret]"}
    assert automation.outputs("dev", show_secrets=True)["directoryAdminPassword"] == "generated-secret"
    automation.destroy("dev", on_output=lambda _line: None)
    calls = pulumi_standin.calls(standin)
    assert any(pulumi_standin.words(c)[0] == "destroy" for c in calls)
    assert {c["cwd"] for c in calls if pulumi_standin.words(c)[0] != "version"} == {str(standin / "ws" / "dev")}


def test_up_without_the_pcluster_venv_stops_before_any_stack_is_touched(standin, monkeypatch):
    monkeypatch.setenv("PCLUSTER_AD_PCLUSTER_VENV", str(standin / "no-venv"))
    with pytest.raises(automation.MissingPrerequisites,
                       match="not install anything during a deployment: run `PCLUSTER_AD_PCLUSTER_VENV=") as err:
        automation.up("dev", dev_config(), on_output=lambda _line: None)
    assert not isinstance(err.value, automation.PulumiCliMissing) and len(err.value.problems) == 1
    assert pulumi_standin.calls(standin) == []


def test_preview_and_up_run_parallelclusters_full_validation_before_any_stack_is_touched(standin):
    """Issue 19 item 2b: a type that exists (the offline check passes it) but that the region does not offer is
    refused as `pcluster create-cluster` would refuse it, as a ConfigError, before the Pulumi CLI is run at all."""
    from pcluster_ad.tools.full_validation import FullValidationFailed

    config = dev_config()
    config["pcluster-ad:cluster"] = {**config["pcluster-ad:cluster"],
                                     "queues": [{"name": "compute", "instanceType": "c8ib.large"}]}
    automation.validate(config, stack="dev")  # the offline check passes it
    with pytest.raises(FullValidationFailed) as err:
        automation.preview("dev", config, secrets={"pcluster-ad:adminPassword": PASSWORD},
                           on_output=lambda _line: None)
    assert isinstance(err.value, ConfigError)  # an embedder's `except ConfigError` handles it
    assert any(p.key.startswith("ParallelCluster ") and "The instance type 'c8ib.large' is not supported" in p.message
               for p in err.value.problems), err.value.problems
    assert "nothing was created" in str(err.value)
    assert pulumi_standin.calls(standin) == []


def test_up_without_moto_in_the_pcluster_venv_names_the_command(standin, monkeypatch, tmp_path):
    venv = tmp_path / "venv-without-moto"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pcluster").write_text("#!/bin/sh\n")
    (venv / "bin" / "pcluster").chmod(0o755)
    (venv / "lib" / "python3.11" / "site-packages" / "aws_parallelcluster-3.16.1.dist-info").mkdir(parents=True)
    monkeypatch.setenv("PCLUSTER_AD_PCLUSTER_VENV", str(venv))
    with pytest.raises(automation.MissingPrerequisites,
                       match=r"has no moto, .* run `PCLUSTER_AD_PCLUSTER_VENV=.* --with-moto 3\.16\.1`"):
        automation.up("dev", dev_config(), on_output=lambda _line: None)
    assert pulumi_standin.calls(standin) == []


@pytest.fixture
def bare_checkout(tmp_path, monkeypatch):
    """A checkout without venv/ (automation.ROOT) and no ParallelCluster venv (PCLUSTER_AD_PCLUSTER_VENV)."""
    root = tmp_path / "checkout"
    (root / "pcluster_ad").mkdir(parents=True)
    (root / "pcluster_ad" / "__init__.py").touch()  # what makes a checkout (launcher.core.is_checkout)
    monkeypatch.setattr(automation, "ROOT", root)
    monkeypatch.setenv("PCLUSTER_AD_PCLUSTER_VENV", str(tmp_path / "no-pcluster-venv"))
    monkeypatch.setenv("PCLUSTER_AD_WORKSPACES", str(tmp_path / "ws"))
    return root


def test_up_reports_every_missing_prerequisite_at_once_cli_first(bare_checkout, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(automation.MissingPrerequisites) as err:
        automation.up("dev", dev_config(), on_output=lambda _line: None)
    assert isinstance(err.value, automation.PulumiCliMissing)  # `except PulumiCliMissing` still sees it
    cli, venv, pcluster = err.value.problems
    assert cli == automation.CLI_MISSING
    assert venv.startswith(f"{bare_checkout / 'venv' / 'bin' / 'python'} is missing: the cluster command runs")
    assert f"bash {bare_checkout / 'scripts' / 'plan.sh'} dev" in venv
    assert pcluster.startswith(f"{tmp_path / 'no-pcluster-venv' / 'bin' / 'pcluster'} is missing")
    assert "tools/pcluster_venv.sh" in pcluster
    message = str(err.value)
    assert message.startswith("3 prerequisites are missing on this machine; nothing was touched:\n  - the Pulumi CLI")
    assert message.index(cli) < message.index(venv) < message.index(pcluster)
    assert not (tmp_path / "ws").exists()  # no workspace, no stack file


def test_up_without_the_program_venv_stops_before_any_stack_is_touched(standin, bare_checkout, monkeypatch):
    monkeypatch.setenv("PCLUSTER_AD_PCLUSTER_VENV", str(ROOT / ".venv-pcluster"))  # this one is there
    with pytest.raises(automation.MissingPrerequisites) as err:
        automation.up("dev", dev_config(), on_output=lambda _line: None)
    assert err.value.problems == [str(err.value)] and "venv/bin/python is missing" in str(err.value)
    assert pulumi_standin.calls(standin) == []
    # With it, the same call deploys.
    (bare_checkout / "venv" / "bin").mkdir(parents=True)
    (bare_checkout / "venv" / "bin" / "python").symlink_to(sys.executable)
    automation.up("dev", dev_config(), on_output=lambda _line: None)
    assert [c for c in pulumi_standin.calls(standin) if pulumi_standin.words(c)[0] == "up"]


def test_the_pcluster_venv_is_looked_up_with_the_workspace_env_vars(standin, monkeypatch):
    """The cluster command sees the workspace's env_vars: the check must look where the launcher will."""
    monkeypatch.delenv("PCLUSTER_AD_PCLUSTER_VENV", raising=False)
    with pytest.raises(automation.MissingPrerequisites, match="elsewhere/bin/pcluster is missing"):
        automation.up("dev", dev_config(), on_output=lambda _line: None,
                      env_vars={"PCLUSTER_AD_PCLUSTER_VENV": str(standin / "elsewhere")})
    assert pulumi_standin.calls(standin) == []


def test_destroy_checks_the_venvs_of_the_deployed_version(standin, bare_checkout, tmp_path):
    """destroy runs the cluster command's delete first: same checks, for the pclusterVersion last deployed."""
    work_dir = tmp_path / "ws" / "dev"
    work_dir.mkdir(parents=True)
    (work_dir / "Pulumi.dev.yaml").write_text(yaml.safe_dump(
        {"config": {"pcluster-ad:cluster": {"name": "hpc-dev", "pclusterVersion": "3.15.0"}}}))
    with pytest.raises(automation.MissingPrerequisites) as err:
        automation.destroy("dev", on_output=lambda _line: None)
    assert [p.split(" is ")[0] for p in err.value.problems] == [
        str(bare_checkout / "venv" / "bin" / "python"), str(tmp_path / "no-pcluster-venv" / "bin" / "pcluster")]
    assert "tools/pcluster_venv.sh 3.15.0" in err.value.problems[1]
    assert pulumi_standin.calls(standin) == []


def test_preview_needs_no_program_venv(standin, bare_checkout, monkeypatch):
    """preview never runs the cluster command: it needs the CLI and the ParallelCluster venv (with moto, for the
    full validation), not the checkout's venv/."""
    monkeypatch.setenv("PCLUSTER_AD_PCLUSTER_VENV", str(ROOT / ".venv-pcluster"))
    automation.preview("dev", dev_config(), on_output=lambda _line: None)
    assert [pulumi_standin.words(c)[0] for c in pulumi_standin.calls(standin)][-1] == "preview"


def test_plan_is_the_offline_plan_of_a_config_dict(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no Pulumi CLI
    monkeypatch.setattr(automation, "ROOT", tmp_path / "no-checkout-venv")  # nor venvs: not needed
    result = automation.plan("dev", dev_config(), secrets={"pcluster-ad:adminPassword": PASSWORD},
                             out=tmp_path / "out")
    names = {r["name"] for r in result["resources"]}
    assert {"network", "directory", "cluster", "cluster-pcluster"} <= names
    assert result["outputs"]["clusterName"] == "hpc-dev"
    assert yaml.safe_load(result["files"]["cluster-config.yaml"])["Region"] == "eu-west-1"
    assert PASSWORD not in json.dumps(result, default=str) and "[secret]" in result["files"]["resources.json"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"resources.json", "outputs.json", "cluster-config.yaml"}


def test_plan_is_what_tools_plan_writes_for_the_same_stack(tmp_path):
    from pcluster_ad.tools import plan as offline

    assert offline.main(["dev", "--out", str(tmp_path / "cli")]) == 0
    result = automation.plan("dev", dev_config())

    def by_name(resources: list[dict]) -> dict:  # the registration order varies between runs (async)
        return {(r["type"], r["name"]): r for r in resources}

    cli = json.loads((tmp_path / "cli" / "resources.json").read_text())
    assert by_name(result["resources"]) == by_name(cli) and len(cli) == len(result["resources"])
    assert result["files"]["cluster-config.yaml"] == (tmp_path / "cli" / "cluster-config.yaml").read_text()


def test_plan_refuses_an_invalid_config_with_every_problem(tmp_path):
    config = dev_config()
    config["pcluster-ad:cluster"] = {**config["pcluster-ad:cluster"], "name": "bad_name"}
    with pytest.raises(ConfigError) as err:
        automation.plan("dev", config, secrets={"pcluster-ad:adminPassword": "short"}, out=tmp_path / "out")
    assert any("cluster.name" in str(p) for p in err.value.problems)
    assert any("adminPassword" in str(p) for p in err.value.problems)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="is a secret"):
        automation.plan("dev", {**dev_config(), "pcluster-ad:adminPassword": PASSWORD})


def test_a_work_dir_inside_the_checkout_is_refused(standin, validated):
    with pytest.raises(ValueError, match="inside the checkout"):
        automation.up("dev", dev_config(), work_dir=ROOT, on_output=lambda _line: None)
    assert pulumi_standin.calls(standin) == []


def test_inline_program_builds_the_whole_stack_under_mocks():
    values = automation.engine_config(dev_config(), secrets={"pcluster-ad:adminPassword": PASSWORD})
    graph = run_program(automation.inline_program, config={k: v for k, (v, _) in values.items()},
                        secret_keys=[k for k, (_, secret) in values.items() if secret], stack="automation",
                        mocks=PlanMocks(region="eu-west-1"))
    names = {r.name for r in graph.resources}
    assert {"network", "directory", "join-secrets", "join-function", "cluster-role", "home", "cluster"} <= names
    assert graph.outputs["clusterName"] == "hpc-dev"
    assert graph.outputs["joinParameterPrefix"] == "/pcluster-ad/automation/"
    assert PASSWORD not in json.dumps([mask_secrets(r.inputs) for r in graph.resources], default=str)


def test_an_installed_package_runs_the_cluster_command_with_its_own_interpreter(installed_package, tmp_path):
    main = automation.program_dir(tmp_path / "ws")
    assert main == tmp_path / "ws" / "program" and (main / "launcher").resolve() == installed_package / "launcher"
    proc = subprocess.run([str(main / "venv" / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == sys.prefix  # the installing venv, with pcluster_ad and its dependencies
    assert automation.launcher_python() == Path(sys.executable)
    assert automation.program_dir(tmp_path / "ws") == main  # again: the same, nothing stale


def test_the_program_directory_refuses_a_workspace_others_can_write(installed_package, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ValueError, match=r"shared must be a directory of your own that nobody else can write"):
        automation.program_dir(shared)
    assert not (shared / "program").exists()


def test_a_planted_symlink_is_replaced_never_followed(installed_package, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    bin_dir = tmp_path / "ws" / "program" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(victim)
    (tmp_path / "ws" / "program" / "launcher").symlink_to(tmp_path)  # another launcher/
    main = automation.program_dir(tmp_path / "ws")
    assert victim.read_text() == "precious\n"
    assert not (bin_dir / "python").is_symlink() and "exec " in (bin_dir / "python").read_text()
    assert (main / "launcher").resolve() == installed_package / "launcher"
