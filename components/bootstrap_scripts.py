"""BootstrapScripts: a private S3 bucket holding the node scripts from bootstrap/.

Nodes download their custom-action scripts at every boot, so a changed script reaches
every node started after `pulumi up` (the object is replaced when its content hash changes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws

SCRIPTS_PREFIX = "bootstrap"


@dataclass
class BootstrapScriptsArgs:
    script_paths: list[str]  # local files, uploaded under bootstrap/<file name>
    force_destroy: bool = True  # the scripts are generated from the repo: nothing to lose
    tags: dict[str, str] = field(default_factory=dict)


class BootstrapScripts(pulumi.ComponentResource):
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    scripts_base_uri: pulumi.Output[str]  # s3://<bucket>/bootstrap
    objects: list[aws.s3.BucketObjectv2]

    def __init__(self, name: str, args: BootstrapScriptsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("pcluster-ad:index:BootstrapScripts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(f"{name}-bucket", aws.s3.BucketArgs(
            bucket_prefix="pcluster-ad-bootstrap-",
            force_destroy=args.force_destroy,
            tags={**args.tags, "Name": f"{name}-bucket"},
        ), child)
        public_block = aws.s3.BucketPublicAccessBlock(f"{name}-public-access-block",
            aws.s3.BucketPublicAccessBlockArgs(
                bucket=bucket.id, block_public_acls=True, block_public_policy=True,
                ignore_public_acls=True, restrict_public_buckets=True,
            ), child)
        aws.s3.BucketOwnershipControls(f"{name}-ownership", aws.s3.BucketOwnershipControlsArgs(
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
        ), child)
        aws.s3.BucketServerSideEncryptionConfiguration(f"{name}-encryption",
            aws.s3.BucketServerSideEncryptionConfigurationInitArgs(
                bucket=bucket.id,
                rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3
                    .BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="AES256"),  # SSE-S3: nodes read without extra KMS grants
                )],
            ), child)
        aws.s3.BucketVersioning(f"{name}-versioning", aws.s3.BucketVersioningInitArgs(
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
        ), child)
        aws.s3.BucketPolicy(f"{name}-tls-only", aws.s3.BucketPolicyArgs(
            bucket=bucket.id,
            policy=pulumi.Output.json_dumps({
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",  # a Deny for everyone who is not using TLS
                    "Action": "s3:*",
                    "Resource": [bucket.arn, pulumi.Output.concat(bucket.arn, "/*")],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }],
            }),
        ), pulumi.ResourceOptions(parent=self, depends_on=[public_block]))

        self.objects = []
        for path in args.script_paths:
            file = Path(path)
            self.objects.append(aws.s3.BucketObjectv2(f"{name}-{file.stem}", aws.s3.BucketObjectv2Args(
                bucket=bucket.id,
                key=f"{SCRIPTS_PREFIX}/{file.name}",
                source=pulumi.FileAsset(str(file)),
                # Content hash: a changed script is uploaded again even if its size is unchanged.
                source_hash=hashlib.sha256(file.read_bytes()).hexdigest(),
                content_type="text/x-shellscript",
            ), child))

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.scripts_base_uri = pulumi.Output.concat("s3://", bucket.bucket, f"/{SCRIPTS_PREFIX}")
        self.register_outputs({
            "bucketName": self.bucket_name,
            "bucketArn": self.bucket_arn,
            "scriptsBaseUri": self.scripts_base_uri,
        })
