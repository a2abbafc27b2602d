"""ClusterRole: the IAM permissions cluster nodes need beyond ParallelCluster's own.

Why `Iam.AdditionalIamPolicies` rather than a custom `InstanceRole`: ParallelCluster then keeps
creating its own per-node-type roles with exactly the permissions its version needs (a custom
head node role must re-implement dozens of ParallelCluster permissions and drift with every
release), and we add one small managed policy. The join function still verifies its callers:
it does not trust a role name, it checks that the calling session's role is the role of the
instance profile actually attached to that instance, whatever name ParallelCluster gave it.

Nodes get two managed policies: the join function's invoke policy (exactly its URL) and read
access to exactly the bootstrap scripts prefix, in a bucket of this account only. The bucket's name is
fixed per account, region and stack (bootstrap_bucket_name), so anyone could own a bucket of that name
in another account (e.g. in the window while this stack re-creates its bucket): the read is allowed only
with `s3:ResourceAccount` = this account, and denied otherwise, which also overrides any broader S3 read
a site attaches to the nodes (ParallelCluster's own `Iam.S3Access` takes a bucket and key only, no
condition; the rendered config does not use it). The custom actions' downloads (boto3 `download_file`:
HeadObject and GetObject, both s3:GetObject) carry the node role's identity, so they are covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class ClusterRoleArgs:
    join_invoke_policy_arn: pulumi.Input[str]  # JoinFunction's policy: call exactly its URL
    bootstrap_bucket_arn: pulumi.Input[str]
    scripts_prefix: str = "bootstrap"
    # The account that owns the bootstrap bucket; None: the deploying account (where BootstrapScripts creates it).
    bucket_account_id: pulumi.Input[str] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def scripts_policy(scripts_arn: str, account_id: str) -> dict:
    """Read the scripts, from this account's bucket only (s3:ResourceAccount)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadBootstrapScripts", "Effect": "Allow", "Action": "s3:GetObject", "Resource": scripts_arn,
             "Condition": {"StringEquals": {"s3:ResourceAccount": account_id}}},
            # Wins over any other Allow the nodes may carry: a bucket of this name in another account is never read.
            {"Sid": "DenyBootstrapScriptsFromOtherAccounts", "Effect": "Deny", "Action": "s3:GetObject",
             "Resource": scripts_arn, "Condition": {"StringNotEquals": {"s3:ResourceAccount": account_id}}},
        ],
    }


class ClusterRole(pulumi.ComponentResource):
    scripts_policy_arn: pulumi.Output[str]
    # What the cluster config lists under AdditionalIamPolicies, head node and every queue.
    additional_policy_arns: pulumi.Output[list[str]]

    def __init__(self, name: str, args: ClusterRoleArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:ClusterRole", name, None, opts)
        account = args.bucket_account_id
        if account is None:
            account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        document = pulumi.Output.all(
            pulumi.Output.concat(args.bootstrap_bucket_arn, f"/{args.scripts_prefix}/*"), account,
        ).apply(lambda v: scripts_policy(v[0], v[1]))
        policy = aws.iam.Policy(f"{name}-scripts-policy", aws.iam.PolicyArgs(
            description="pcluster-ad nodes: read the bootstrap scripts (custom actions), from this account only",
            policy=pulumi.Output.json_dumps(document),
            tags={**args.tags, "Name": f"{name}-scripts-policy"},
        ), pulumi.ResourceOptions(parent=self))
        self.scripts_policy_arn = policy.arn
        self.additional_policy_arns = pulumi.Output.all(args.join_invoke_policy_arn, policy.arn)
        self.register_outputs({
            "scriptsPolicyArn": self.scripts_policy_arn,
            "additionalPolicyArns": self.additional_policy_arns,
        })
