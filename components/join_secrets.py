"""JoinSecrets: the stack's join credentials in SSM Parameter Store, under a customer-managed KMS key
that only the join function's role (and the deployer, through SSM) can decrypt."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

# What the account (through IAM policies) may do with the key besides using it. Listed, not
# wildcarded: `kms:Create*` would include kms:CreateGrant, and a grant can hand out Decrypt
# without touching this policy.
KEY_ADMIN_ACTIONS = sorted([
    "kms:CancelKeyDeletion", "kms:CreateAlias", "kms:DeleteAlias", "kms:DescribeKey", "kms:DisableKey",
    "kms:DisableKeyRotation", "kms:EnableKey", "kms:EnableKeyRotation", "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus", "kms:ListGrants", "kms:ListKeyPolicies", "kms:ListKeyRotations",
    "kms:ListResourceTags", "kms:PutKeyPolicy", "kms:RevokeGrant", "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource", "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
])
# SSM PutParameter encrypts with Encrypt (standard tier) or GenerateDataKey (advanced tier).
KEY_ENCRYPT_ACTIONS = ["kms:Encrypt", "kms:GenerateDataKey"]

_ASSUMED_ROLE = re.compile(r"arn:([^:]+):sts::(\d{12}):assumed-role/([^/]+)/.+")


def principal_arn_patterns(caller_arn: str) -> list[str]:
    """`aws:PrincipalArn` patterns (ArnLike) for the identity behind a GetCallerIdentity ARN.

    A role session's aws:PrincipalArn is the role's ARN, which may carry a path that the session
    ARN omits (SSO roles live under /aws-reserved/...). Role names are unique in an account
    whatever the path, so `role/NAME` plus `role/*/NAME` match exactly that role.
    """
    m = _ASSUMED_ROLE.fullmatch(caller_arn)
    if not m:
        return [caller_arn]  # IAM user, root, federated user: aws:PrincipalArn is the caller ARN
    partition, account, role = m.groups()
    return [f"arn:{partition}:iam::{account}:role/{role}", f"arn:{partition}:iam::{account}:role/*/{role}"]


@dataclass
class JoinSecretsArgs:
    stack: str
    domain_name: str
    join_user: pulumi.Input[str]
    join_password: pulumi.Input[str]  # secret
    reader_role_name: str  # the join function's role (created without a path)
    # Other roles (without a path) that read this stack's SecureStrings: the directory-admin function.
    extra_reader_role_names: Sequence[str] = ()
    # Who runs `pulumi up` / `refresh` for this stack: the provider reads every SecureString back
    # WITH decryption after each write and on refresh, so the deployer needs Decrypt through SSM.
    # ArnLike patterns of aws:PrincipalArn; None = the identity running this deployment.
    deployer_principal_arns: Sequence[pulumi.Input[str]] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def parameter_names(stack: str) -> dict[str, str]:
    return {part: f"/pcluster-ad/{stack}/{part}" for part in ("domain", "join-user", "join-password")}


class JoinSecrets(pulumi.ComponentResource):
    key_arn: pulumi.Output[str]
    key_alias: pulumi.Output[str]
    domain_parameter_name: pulumi.Output[str]
    join_user_parameter_name: pulumi.Output[str]
    join_password_parameter_name: pulumi.Output[str]
    parameter_arns: pulumi.Output[list[str]]
    join_password_parameter_arn: pulumi.Output[str]
    join_password_version: pulumi.Output[int]

    def __init__(self, name: str, args: JoinSecretsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:JoinSecrets", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        invoke = pulumi.InvokeOutputOptions(parent=self)
        caller = aws.get_caller_identity_output(opts=invoke)
        partition = aws.get_partition_output(opts=invoke)
        region = aws.get_region_output(opts=invoke)
        deployers = (pulumi.Output.all(*args.deployer_principal_arns) if args.deployer_principal_arns is not None
                     else caller.arn.apply(principal_arn_patterns))

        key = aws.kms.Key(f"{name}-key", aws.kms.KeyArgs(
            description=f"pcluster-ad {args.stack}: AD join credentials in SSM Parameter Store",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.json_dumps(_key_policy(
                account=caller.account_id,
                partition=partition.partition,
                via_ssm=pulumi.Output.concat("ssm.", region.region, ".", partition.dns_suffix),
                reader_role_names=[args.reader_role_name, *args.extra_reader_role_names],
                deployers=deployers,
            )),
            tags={**args.tags, "Name": f"{name}-key"},
        ), child)
        alias = aws.kms.Alias(f"{name}-key-alias", aws.kms.AliasArgs(
            name=f"alias/pcluster-ad-{args.stack}-join", target_key_id=key.key_id), child)

        names = parameter_names(args.stack)

        def parameter(part: str, description: str, **kwargs: Any) -> aws.ssm.Parameter:
            return aws.ssm.Parameter(f"{name}-{part}", aws.ssm.ParameterArgs(
                name=names[part], description=description, tags={**args.tags, "Name": f"{name}-{part}"},
                **kwargs), child)

        # The domain is not secret: insecure_value keeps it readable in diffs (String only).
        domain = parameter("domain", "AD domain nodes join", type="String", insecure_value=args.domain_name)
        # `value` (not insecure_value) is always a Pulumi secret. value_wo would keep it out of
        # state too, but needs a manually bumped value_wo_version to ever change it.
        user = parameter("join-user", "AD user allowed to join computers", type="SecureString",
                         key_id=key.arn, value=pulumi.Output.secret(args.join_user))
        password = parameter("join-password", "password of the AD join user", type="SecureString",
                             key_id=key.arn, value=pulumi.Output.secret(args.join_password))

        self.key_arn = key.arn
        self.key_alias = alias.name
        self.domain_parameter_name = domain.name
        self.join_user_parameter_name = user.name
        self.join_password_parameter_name = password.name
        self.parameter_arns = pulumi.Output.all(domain.arn, user.arn, password.arn)
        self.join_password_parameter_arn = password.arn
        self.join_password_version = password.version
        self.register_outputs({
            "keyArn": self.key_arn,
            "keyAlias": self.key_alias,
            "domainParameterName": self.domain_parameter_name,
            "joinUserParameterName": self.join_user_parameter_name,
            "joinPasswordParameterName": self.join_password_parameter_name,
            "parameterArns": self.parameter_arns,
        })


def _key_policy(*, account: pulumi.Input[str], partition: pulumi.Input[str], via_ssm: pulumi.Input[str],
                reader_role_names: Sequence[str], deployers: pulumi.Input[list[str]]) -> dict[str, Any]:
    root = pulumi.Output.concat("arn:", partition, ":iam::", account, ":root")
    reader_arns = [pulumi.Output.concat("arn:", partition, ":iam::", account, ":role/", n) for n in reader_role_names]
    reader_arn = reader_arns[0] if len(reader_arns) == 1 else reader_arns
    via = {"StringEquals": {"kms:ViaService": via_ssm}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            # The account administers the key (through IAM policies) but never gets Decrypt or
            # ReEncrypt*: a broad `kms:Decrypt` on `*` somewhere in the account reads nothing here.
            {"Sid": "AccountAdministersKey", "Effect": "Allow", "Principal": {"AWS": root},
             "Action": KEY_ADMIN_ACTIONS, "Resource": "*"},  # `*` in a key policy = this key
            {"Sid": "AccountEncryptsViaSsm", "Effect": "Allow", "Principal": {"AWS": root},
             "Action": KEY_ENCRYPT_ACTIONS, "Resource": "*", "Condition": via},
            # The reader role is matched by a condition, not named as Principal: KMS rejects a
            # policy whose principal does not exist yet, and the role's own policy needs this key's
            # ARN, so naming it would be a creation cycle (key policy <-> role policy). A condition on
            # the ARN also survives the role being recreated (a Principal would pin its old id).
            {"Sid": "ReaderRoleDecryptsViaSsm", "Effect": "Allow", "Principal": {"AWS": root},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"ArnEquals": {"aws:PrincipalArn": reader_arn}, **via}},
            # The provider re-reads SecureStrings with decryption after creating/updating them and
            # on refresh: without this the deployer's `pulumi up` fails right after PutParameter.
            {"Sid": "DeployerReadsBackViaSsm", "Effect": "Allow", "Principal": {"AWS": root},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"ArnLike": {"aws:PrincipalArn": deployers}, **via}},
        ],
    }
