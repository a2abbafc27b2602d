"""Issue 19 item 1: names from the stack config that become part of AWS names (a user's initial-password SSM
parameter; IAM role/policy and Lambda names from the stack name) are checked against the service's own rule as
botocore's model states it, and user/group names against what sssd, POSIX tools and the identity ledger carry:
refused offline, naming the key, before anything is created. moto accepts the bad names, so nothing else would."""

from __future__ import annotations

import copy
from typing import Any

import boto3
import botocore.model
import botocore.session
import pytest
from moto import mock_aws

from pcluster_ad import stack_config
from pcluster_ad.lambda_src.directory_admin import initial_password_parameter_name
from pcluster_ad.stack_config import ConfigError, aws_name_problem, aws_name_rule, parse_settings, physical_names
from tests.conftest import stack_doc

ISSUE_USERS = ["john smith", "jürgen", "o'brien", "bob@team.example.org"]
GOOD_USERS = ["alice", "john.smith", "o_brien", "jurgen-2", "Bob.Team", "a1"]


def raw(users: list[str] = (), groups: list[str] = ("hpc",)) -> dict[str, Any]:
    r = copy.deepcopy(stack_doc("dev")["config"])
    r.pop("pcluster-ad:join", None)
    r["pcluster-ad:groups"] = [{"name": g} for g in groups]
    r["pcluster-ad:users"] = [{"name": u} for u in users]
    return r


def problems(r: dict[str, Any], stack: str = "dev") -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(r, stack=stack)
    return [str(p) for p in err.value.problems]


@pytest.fixture(autouse=True)
def _fresh_rules():
    aws_name_rule.cache_clear()
    yield
    aws_name_rule.cache_clear()


def test_issue_user_names_are_refused_all_at_once_naming_key_and_fix():
    got = problems(raw(ISSUE_USERS + ["alice"]))
    assert len(got) == len(ISSUE_USERS)  # every bad name at once, one line each; alice passes
    for i, (name, line) in enumerate(zip(ISSUE_USERS, got, strict=True)):
        assert line.startswith(f"pcluster-ad:users[{i}].name: {name!r} cannot be a user name")
        assert "/pcluster-ad/dev/users/" in line and "ssm PutParameter.Name" in line and "Fix: rename it" in line
    assert "e.g. 'john.smith'" in got[0] and "e.g. 'jurgen'" in got[1] and "e.g. 'obrien'" in got[2]
    assert "ASCII" in got[1] and "name@domain" in got[3] and "e.g. 'bob'" in got[3]


@pytest.mark.parametrize("name, cause", [("-bob", "leading '-'"), ("12345", "all-digit")])
def test_posix_rules_no_model_carries(name: str, cause: str):
    (line,) = problems(raw([name]))
    assert line.startswith("pcluster-ad:users[0].name") and cause in line and "SSM" not in line


@pytest.mark.parametrize("group, cause", [("grüppe", "ASCII"), ("a@b", "name@domain"), ("-g", "leading '-'"),
                                          ("4711", "all-digit")])
def test_declared_group_names_follow_the_posix_rules(group: str, cause: str):
    (line,) = problems(raw(groups=["hpc", group]))
    assert line.startswith("pcluster-ad:groups[1].name") and cause in line


def test_good_names_pass():
    s = parse_settings(raw(GOOD_USERS, groups=["hpc", "Domain Users", "gpu.a100"]), stack="dev")
    assert [u.name for u in s.users] == GOOD_USERS
    assert [g.name for g in s.groups] == ["hpc", "Domain Users", "gpu.a100"]  # spaces: AD and sssd carry them


def use_model(monkeypatch: pytest.MonkeyPatch, *, ssm_doc: str | None = None, iam_role_pattern: str | None = None):
    """Make botocore serve an edited copy of its installed models (the loader's cached one stays intact)."""
    real = botocore.session.Session.get_service_model

    def model(self, name, api_version=None):
        m = real(self, name, api_version)
        desc = copy.deepcopy(m._service_description)
        if name == "ssm" and ssm_doc is not None:
            desc["shapes"]["PutParameterRequest"]["members"]["Name"]["documentation"] = ssm_doc
        if name == "iam" and iam_role_pattern is not None:
            desc["shapes"]["roleNameType"]["pattern"] = iam_role_pattern
        return botocore.model.ServiceModel(desc, m.service_name)

    monkeypatch.setattr(botocore.session.Session, "get_service_model", model)
    aws_name_rule.cache_clear()


def test_the_rule_is_read_from_botocores_model(monkeypatch: pytest.MonkeyPatch):
    """The verdict follows the installed model: edit the model's SSM text or IAM pattern and it changes."""
    ssm_shape = botocore.session.get_session().get_service_model("ssm").operation_model("PutParameter") \
        .input_shape.members["Name"]
    assert "pattern" not in ssm_shape.metadata and "<code>a-zA-Z0-9_.-</code>" in ssm_shape.documentation
    assert aws_name_rule("ssm_parameter").pattern == "[/a-zA-Z0-9_.-]+"
    assert parse_settings(raw(["john.smith"]), stack="dev").users

    # A model whose SSM names have no '.': john.smith is refused, naming the key.
    doc = ssm_shape.documentation.replace("<code>a-zA-Z0-9_.-</code>", "<code>a-zA-Z0-9_-</code>")
    use_model(monkeypatch, ssm_doc=doc)
    (line,) = problems(raw(["john.smith"]))
    assert line.startswith("pcluster-ad:users[0].name: 'john.smith'") and "'.'" in line
    # ...and one whose IAM role names are lower-case letters only: the role names built from the stack name.
    use_model(monkeypatch, iam_role_pattern="[a-z]+")
    got = problems(raw())
    assert got == ["stack name: 'dev': the join role and directory admin role names ('pcad-dev-eu-west-1-join',"
                   " 'pcad-dev-eu-west-1-dir') are refused by iam CreateRole.RoleName (roleNameType): '-' '1'"
                   " (allowed: [a-z]+): use letters, digits, '-' or '_'"]  # one cause, one line (issue 19)
    # A model that no longer states SSM's characters fails loudly instead of passing every name.
    use_model(monkeypatch, ssm_doc="no rule here")
    with pytest.raises(RuntimeError, match="no longer states"):
        aws_name_rule("ssm_parameter")


def test_stack_built_names_pass_their_models():
    names = physical_names("team_a-prod", "ap-southeast-2")
    for kind, aws_kind in stack_config._PHYSICAL_NAME_KINDS.items():
        assert aws_name_problem(aws_kind, names[kind]) is None
    assert "lambda CreateFunction.FunctionName" in aws_name_problem("lambda_function", "pcad-dev.x")
    assert "iam CreateRole.RoleName" in aws_name_problem("iam_role", "pcad dev")
    assert "more than the 64" in aws_name_problem("iam_role", "x" * 65)


@pytest.mark.parametrize("user", ISSUE_USERS)
def test_moto_accepts_what_ssm_refuses(user: str):
    """Why the check is needed: the mocks the project tests AWS with would let these names through to `up`."""
    name = initial_password_parameter_name("dev", user)
    with mock_aws():
        ssm = boto3.client("ssm", region_name="eu-west-1")
        ssm.put_parameter(Name=name, Value="x", Type="SecureString")
        assert ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Name"] == name
    assert aws_name_problem("ssm_parameter", name)  # ...that the service's own rule refuses
