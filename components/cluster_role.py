"""ClusterRole: the IAM permissions cluster nodes need beyond ParallelCluster's own.

Why `Iam.AdditionalIamPolicies` rather than a custom `InstanceRole`: ParallelCluster then keeps
creating its own per-node-type roles with exactly the permissions its version needs (a custom
head node role must re-implement dozens of ParallelCluster permissions and drift with every
release), and we add one small managed policy. The join function still verifies its callers:
it does not trust a role name, it checks that the calling session's role is the role of the
instance profile actually attached to that instance, whatever name ParallelCluster gave it.

Nodes get two managed policies: the join function's invoke policy (exactly its URL) and read
access to exactly the bootstrap scripts prefix.
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
    tags: dict[str, str] = field(default_factory=dict)


class ClusterRole(pulumi.ComponentResource):
    scripts_policy_arn: pulumi.Output[str]
    # What the cluster config lists under AdditionalIamPolicies, head node and every queue.
    additional_policy_arns: pulumi.Output[list[str]]

    def __init__(self, name: str, args: ClusterRoleArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:ClusterRole", name, None, opts)
        scripts_policy = aws.iam.Policy(f"{name}-scripts-policy", aws.iam.PolicyArgs(
            description="pcluster-ad nodes: read the bootstrap scripts (custom actions)",
            policy=pulumi.Output.json_dumps({
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "ReadBootstrapScripts",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": pulumi.Output.concat(args.bootstrap_bucket_arn, f"/{args.scripts_prefix}/*"),
                }],
            }),
            tags={**args.tags, "Name": f"{name}-scripts-policy"},
        ), pulumi.ResourceOptions(parent=self))
        self.scripts_policy_arn = scripts_policy.arn
        self.additional_policy_arns = pulumi.Output.all(args.join_invoke_policy_arn, scripts_policy.arn)
        self.register_outputs({
            "scriptsPolicyArn": self.scripts_policy_arn,
            "additionalPolicyArns": self.additional_policy_arns,
        })
