"""ClusterRole: the IAM permissions cluster nodes need beyond ParallelCluster's own.

Why `Iam.AdditionalIamPolicies` rather than a custom `InstanceRole`: ParallelCluster then keeps
creating its own per-node-type roles with exactly the permissions its version needs (a custom
head node role must re-implement dozens of ParallelCluster permissions and drift with every
release), and we add one small managed policy. The join function still verifies its callers:
it does not trust a role name, it checks that the calling session's role is the role of the
instance profile actually attached to that instance, whatever name ParallelCluster gave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass
class ClusterRoleArgs:
    join_function_arn: pulumi.Input[str]
    bootstrap_bucket_arn: pulumi.Input[str]
    scripts_prefix: str = "bootstrap"
    tags: dict[str, str] = field(default_factory=dict)


class ClusterRole(pulumi.ComponentResource):
    policy_arn: pulumi.Output[str]
    # What the cluster config lists under AdditionalIamPolicies, head node and every queue.
    additional_policy_arns: pulumi.Output[list[str]]

    def __init__(self, name: str, args: ClusterRoleArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:ClusterRole", name, None, opts)
        policy = aws.iam.Policy(f"{name}-node-policy", aws.iam.PolicyArgs(
            description="pcluster-ad nodes: call the domain-join function URL, read the bootstrap scripts",
            policy=pulumi.Output.json_dumps({
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "CallJoinFunctionUrl",
                        "Effect": "Allow",
                        "Action": "lambda:InvokeFunctionUrl",
                        "Resource": args.join_function_arn,
                        "Condition": {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}},
                    },
                    {
                        # Since 2025 a function URL caller also needs InvokeFunction, limited here
                        # to calls that arrive through the URL.
                        "Sid": "InvokeJoinFunctionViaUrlOnly",
                        "Effect": "Allow",
                        "Action": "lambda:InvokeFunction",
                        "Resource": args.join_function_arn,
                        "Condition": {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}},
                    },
                    {
                        "Sid": "ReadBootstrapScripts",
                        "Effect": "Allow",
                        "Action": "s3:GetObject",
                        "Resource": pulumi.Output.concat(args.bootstrap_bucket_arn, f"/{args.scripts_prefix}/*"),
                    },
                ],
            }),
            tags={**args.tags, "Name": f"{name}-node-policy"},
        ), pulumi.ResourceOptions(parent=self))
        self.policy_arn = policy.arn
        self.additional_policy_arns = pulumi.Output.all(policy.arn)
        self.register_outputs({"policyArn": self.policy_arn, "additionalPolicyArns": self.additional_policy_arns})
