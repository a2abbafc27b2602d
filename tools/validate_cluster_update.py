#!/usr/bin/env python3
"""ParallelCluster's own UPDATE validation of a stack change, against a moto world.

Run it with the ParallelCluster venv's interpreter (tools/pcluster_venv.sh --with-moto), never the project venv:

    venv/bin/python -m pcluster_ad.tools.plan dev --out plan-out/base          # the stack as deployed
    venv/bin/python -m pcluster_ad.tools.plan --config-file changed.yaml --out plan-out/target
    .venv-pcluster/bin/python tools/validate_cluster_update.py plan-out/base plan-out/target \
        --cluster-name hpc-dev [--fleet running|stopped] [--json]
    .venv-pcluster/bin/python tools/validate_cluster_update.py --batch < cases.json   # many changes, one process

What `pcluster update-cluster` runs before it touches anything (the pinned version,
api/controllers/cluster_operations_controller.py `update_cluster`, models/cluster.py
`validate_update_request`): the cluster's version check; the stack exists and is not IN_PROGRESS; the TARGET
config's schema load and every semantic validator in the update context
(`ValidatorContext(head_node_instance_id=<the head node>, during_update=True)`, with the stack's OfficialAmi
and its managed HeadNodeSecurityGroup / ComputeSecurityGroup set on the config); then the change policy,
`ConfigPatch(cluster, base, target).check()`, which asks the cluster whether its compute fleet runs. This tool
calls exactly that code (`Cluster(name).validate_update_request(...)`), in a world that holds what it asks:

- the target plan's resources (tools/validate_cluster_full.py's World: VPC, subnets, security groups with their
  rules, EFS and mount targets, bucket, policies), plus the base plan's resources the target no longer has;
- the existing cluster as ParallelCluster's create left it: its default S3 bucket holding the BASE config
  (uploaded by ParallelCluster's own `Cluster._upload_config`), the head node instance tagged as ParallelCluster
  tags it (base AMI, type and subnet; base EBS homes attached to it), the managed security groups, the
  compute-fleet status item in DynamoDB (RUNNING or STOPPED), and the CloudFormation stack (CREATE_COMPLETE,
  its version tag and parameters). moto's CloudFormation needs extras this venv does without, so DescribeStacks
  and DescribeStackResources are answered by a botocore hook from that description;
- login pools are taken as not running (no load balancer in the world), the head node as running.

Validators moto cannot answer are suppressed as in the create validation (validate_cluster_full.SUPPRESSED).

Each run's verdict: "allowed" (update-cluster would start the update), "refused" (ClusterUpdateError: the
change policy refuses, updateValidationErrors say why), "no-change" (ParallelCluster's "No changes found"),
"invalid" (a validator failed at ERROR level: ConfigValidationError), "error" (anything else ParallelCluster
raised, e.g. the version check). JSON per case: {"id", "seconds", "runs": {"RUNNING"|"STOPPED": {"verdict",
"message", "failures": [{level, type, message}], "changeSet": [...], "updateValidationErrors": [...]}},
"blocked_network": [...], "not_checked": [...]} (an adopted VPC is built as the create validation builds it).
Exit codes: 0 every run allowed or no-change, 1 otherwise, 2 usage or internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import validate_cluster_full as full  # the sibling script, run from the same venv

FLEETS = ("STOPPED", "RUNNING")


def _stack_name(request: dict[str, Any]) -> Any:
    """The StackName of a CloudFormation request as a before-call hook sees it (query protocol: in the body)."""
    body = request.get("body")
    return body.get("StackName") if isinstance(body, dict) else None


class _Stack:
    """The CloudFormation stack of the existing cluster, as DescribeStacks / DescribeStackResources answer it."""

    current: dict[str, Any] | None = None  # {"name", "data", "resources"} of the case being run

    @classmethod
    def describe_stacks(cls, params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        stack = cls.current
        if stack and _stack_name(params) in (stack["name"], stack["data"]["StackId"]):
            return full._HttpStatus(200), {"Stacks": [stack["data"]], "ResponseMetadata": {"HTTPStatusCode": 200}}
        return full._no_such_stack(params)

    @classmethod
    def describe_stack_resources(cls, params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        stack = cls.current
        if not stack or _stack_name(params) != stack["name"]:
            return full._no_such_stack(params)
        answer = {"StackResources": stack["resources"], "ResponseMetadata": {"HTTPStatusCode": 200}}
        return full._HttpStatus(200), answer


class World(full.World):
    """The create validation's world (the EBS home volume: an update sees it attached to the head node), plus the EFS
    file system a stack adopts by id (`homeStorage.fileSystemId`: it exists before the stack)."""

    def build_all(self) -> None:
        self._adopted_file_systems()
        super().build_all()

    def _adopted_file_systems(self) -> None:
        from moto.backends import get_backend

        for r in self.by_name.values():
            fs_id = r["inputs"].get("fileSystemId") if r["type"] == "aws:efs/mountTarget:MountTarget" else None
            if not (isinstance(fs_id, str) and re.fullmatch(r"fs-[0-9a-f]{8,40}", fs_id)):
                continue  # a placeholder: the stack's own file system, built with the plan
            backend = get_backend("efs")[full.ACCOUNT][self.region]
            if fs_id in backend.file_systems_by_id:
                continue
            made = self.efs.create_file_system(CreationToken=f"adopted-{fs_id}", Encrypted=True)["FileSystemId"]
            # moto draws ids at random: give the file system the id the user configured.
            fs = backend.file_systems_by_id.pop(made)
            fs.file_system_id, fs.file_system_arn = fs_id, fs.file_system_arn.replace(made, fs_id)
            backend.file_systems_by_id[fs_id] = fs

    def _aws_s3_bucketObjectv2_BucketObjectv2(self, name: str, i: dict[str, Any]) -> None:
        buckets = {v["bucket"] for v in self.values.values() if "bucket" in v}
        if i["bucket"] not in buckets:
            # Mocks that re-create the bucket give it an id other than its name (the table's new-bootstrap-bucket
            # row); on AWS a bucket's id IS its name, so the object goes to the bucket it depends on.
            owners = [d for d in self.by_name[name].get("dependencies") or []
                      if self.by_name.get(d, {}).get("type") == "aws:s3/bucket:Bucket"]
            if len(owners) == 1:
                i = {**i, "bucket": self.value_of(owners[0], "bucket")}
        super()._aws_s3_bucketObjectv2_BucketObjectv2(name, i)


def _read_plan(plan_dir: Path) -> tuple[list[dict[str, Any]], str]:
    resources = json.loads((plan_dir / "resources.json").read_text())
    # Without comment lines: tools.plan's header explains the placeholders with one.
    text = "".join(line for line in (plan_dir / "cluster-config.yaml").read_text().splitlines(keepends=True)
                   if not line.lstrip().startswith("#"))
    return resources, text


def _custom_amis(texts: list[str]) -> list[tuple[str, str]]:
    import yaml

    amis = set()
    for text in texts:
        image = (yaml.safe_load(text) or {}).get("Image") or {}
        if image.get("CustomAmi"):
            amis.add((image["CustomAmi"], image.get("Os", "linux")))
    return sorted(amis)


def _deny_statements_out() -> None:
    """ParallelCluster's default-bucket policy has two Deny statements aimed at others (s3:* when
    `aws:SecureTransport` is false; PutObject under parallelcluster/* by the CloudWatch Logs service). moto
    ignores their Condition and Principal and denies the account itself (ParallelCluster's own put of the
    bucket's bootstrap marker: 403 Forbidden). The bucket gets the policy without them; nothing here reads it."""
    from pcluster.models.s3_bucket import S3Bucket

    generate = S3Bucket._generate_bucket_policy
    if getattr(generate, "deny_out", False):
        return

    def without_deny(self: Any) -> dict[str, Any]:
        policy = generate(self)
        policy["Statement"] = [s for s in policy["Statement"] if s.get("Effect") != "Deny"]
        return policy

    without_deny.deny_out = True  # type: ignore[attr-defined]
    S3Bucket._generate_bucket_policy = without_deny


def _existing_cluster(world: full.World, name: str, base_text: str, base: dict[str, Any]) -> dict[str, Any]:
    """What ParallelCluster's create left in the account for BASE: returns the stack description."""
    import boto3
    from pcluster.constants import PCLUSTER_CLUSTER_NAME_TAG, PCLUSTER_NODE_TYPE_TAG, PCLUSTER_VERSION_TAG
    from pcluster.models.cluster import Cluster
    from pcluster.utils import get_installed_version

    # The base config in ParallelCluster's default bucket, uploaded by its own create step.
    _deny_statements_out()
    creator = Cluster(name, base_text)
    creator._generate_artifact_dir()
    creator._upload_config()
    config = creator.config
    official_ami = config.official_ami  # ParallelCluster's own lookup: the stack keeps it as OfficialAmi
    head = base["HeadNode"]
    subnet = head["Networking"]["SubnetId"]
    vpc = world.ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
    groups = {}
    for logical in ("HeadNodeSecurityGroup", "ComputeSecurityGroup"):  # ParallelCluster's managed groups
        groups[logical] = world.ec2.create_security_group(
            GroupName=f"{name}-{logical}", Description=f"{logical} of {name}", VpcId=vpc)["GroupId"]
    tags = [{"Key": PCLUSTER_CLUSTER_NAME_TAG, "Value": name}, {"Key": PCLUSTER_NODE_TYPE_TAG, "Value": "HeadNode"}]
    instance = world.ec2.run_instances(
        ImageId=(base.get("Image") or {}).get("CustomAmi") or official_ami, InstanceType=head["InstanceType"],
        MinCount=1, MaxCount=1, SubnetId=subnet, SecurityGroupIds=[groups["HeadNodeSecurityGroup"]],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]
    for n, storage in enumerate(base.get("SharedStorage") or []):  # an existing EBS home hangs on the head node
        volume = (storage.get("EbsSettings") or {}).get("VolumeId")
        if volume:
            world.ec2.attach_volume(VolumeId=volume, InstanceId=instance["InstanceId"], Device=f"/dev/sd{'fghij'[n]}")
    table = boto3.resource("dynamodb", region_name=world.region).create_table(
        TableName=f"parallelcluster-{name}", BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "Id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "Id", "AttributeType": "S"}])
    params = {"ResourcesS3Bucket": creator.bucket.name, "ArtifactS3RootDirectory": creator.s3_artifacts_dir,
              "ConfigVersion": config.original_config_version, "OfficialAmi": official_ami}
    return {
        "name": name,
        "table": table,
        "data": {
            "StackName": name, "StackStatus": "CREATE_COMPLETE", "CreationTime": "2026-09-01T00:00:00Z",
            "StackId": f"arn:aws:cloudformation:{world.region}:{full.ACCOUNT}:stack/{name}/0",
            "Tags": [{"Key": PCLUSTER_VERSION_TAG, "Value": get_installed_version()}],
            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        },
        "resources": [{"LogicalResourceId": k, "PhysicalResourceId": v, "ResourceType": "AWS::EC2::SecurityGroup",
                       "ResourceStatus": "CREATE_COMPLETE", "StackName": name, "Timestamp": "2026-09-01T00:00:00Z"}
                      for k, v in groups.items()],
    }


def _update_request(name: str, target_text: str) -> dict[str, Any]:
    """`pcluster update-cluster` up to (not including) the stack update, as its controller runs it."""
    from pcluster.api.controllers.cluster_operations_controller import _analyze_changes
    from pcluster.api.controllers.common import check_cluster_version, get_validator_suppressors
    from pcluster.models.cluster import (
        BadRequestClusterActionError,
        Cluster,
        ClusterActionError,
        ClusterUpdateError,
        ConfigValidationError,
    )
    from pcluster.validators.common import FailureLevel

    def changes(rows: Any) -> dict[str, Any]:
        change_set, errors = _analyze_changes(rows)
        return {"changeSet": [c.to_dict() for c in change_set], "updateValidationErrors": [e.to_dict() for e in errors]}

    cluster = Cluster(name)
    result: dict[str, Any] = {"failures": [], "changeSet": [], "updateValidationErrors": []}
    try:
        if not check_cluster_version(cluster, exact_match=True):
            return {**result, "verdict": "error", "message": "the cluster's version is not the installed one"}
        _, rows, ignored = cluster.validate_update_request(
            target_source_config=target_text, force=False,
            validator_suppressors=get_validator_suppressors([f"type:{n}" for n in full.SUPPRESSED]),
            validation_failure_level=FailureLevel.ERROR)
        return {**result, **changes(rows), "verdict": "allowed", "message": "", "failures": full._as_dicts(ignored)}
    except ConfigValidationError as exc:
        failures = full._as_dicts(exc.validation_failures or [])
        if not failures:  # a validator's setup raised: that message is all the CLI prints
            failures = [{"level": "ERROR", "type": "ConfigValidationError", "message": str(exc)}]
        return {**result, "verdict": "invalid", "message": str(exc), "failures": failures}
    except ClusterUpdateError as exc:
        return {**result, **changes(exc.update_changes), "verdict": "refused", "message": str(exc)}
    except BadRequestClusterActionError as exc:
        verdict = "no-change" if str(exc).startswith("No changes found") else "error"
        return {**result, "verdict": verdict, "message": str(exc)}
    except ClusterActionError as exc:
        return {**result, "verdict": "error", "message": f"{type(exc).__name__}: {exc}"}


def validate_update(case: dict[str, Any]) -> dict[str, Any]:
    """One stack change: build its world, then run update-cluster's validation once per fleet state."""
    import yaml

    started = time.perf_counter()
    base_resources, base_raw = _read_plan(Path(case["base"]))
    target_resources, target_raw = _read_plan(Path(case["target"]))
    target_names = {r["name"] for r in target_resources}
    # The world after `pulumi up` changed the stack: the target's resources, and what the base config names
    # that the target no longer has (it still existed while the old cluster used it).
    resources = target_resources + [r for r in base_resources if r["name"] not in target_names]
    region = yaml.safe_load(target_raw)["Region"]
    os.environ["AWS_DEFAULT_REGION"] = region
    name = case["clusterName"]
    runs: dict[str, Any] = {}
    with full._NetworkGuard() as guard, full.moto_world():
        from pcluster.aws.aws_api import AWSApi
        from pcluster.aws.common import Cache

        AWSApi.reset()  # fresh clients (and caches) inside this moto world
        Cache.clear_all()
        world = World(resources, region)
        not_checked = world.adopt_network([yaml.safe_load(base_raw), yaml.safe_load(target_raw)])
        world.build_all()
        base_text = full.PLACEHOLDER_RE.sub(lambda m: world.placeholder(m[1]), base_raw)
        target_text = full.PLACEHOLDER_RE.sub(lambda m: world.placeholder(m[1]), target_raw)
        base, target = yaml.safe_load(base_text), yaml.safe_load(target_text)
        for config in (base, target):  # brought by the user, as in the create validation
            key_name = ((config.get("HeadNode") or {}).get("Ssh") or {}).get("KeyName")
            if key_name and not world.ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [key_name]}])[
                    "KeyPairs"]:
                os_name = str((config.get("Image") or {}).get("Os", ""))
                world.ec2.create_key_pair(KeyName=key_name, KeyType="ed25519" if os_name.startswith("ubuntu")
                                          else "rsa")
        stack = _existing_cluster(world, name, base_text, base)
        _Stack.current = stack
        try:
            for fleet in case.get("fleets") or FLEETS:
                stack["table"].put_item(Item={"Id": "COMPUTE_FLEET", "Data": {
                    "status": fleet, "lastStatusUpdatedTime": "2026-09-01 00:00:00.000000+00:00"}})
                Cache.clear_all()  # nothing ParallelCluster looked up for the previous run is reused
                runs[fleet] = _update_request(name, target_text)
        finally:
            _Stack.current = None
    return {"id": case.get("id"), "runs": runs, "seconds": round(time.perf_counter() - started, 2),
            "blocked_network": guard.blocked, "not_checked": not_checked}


def validate_updates(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every case in this one process (importing ParallelCluster and moto costs seconds: once)."""
    texts = [_read_plan(Path(case[side]))[1] for case in cases for side in ("base", "target")]
    with tempfile.TemporaryDirectory(prefix="pcluster-ad-update-") as tmp:
        # moto reads its AMI list once, at import: every custom AMI of every case goes in now.
        full._env_for_moto(Path(tmp), "us-east-1", _custom_amis(texts))
        from botocore.handlers import BUILTIN_HANDLERS

        for hook in (("before-call.cloudformation.DescribeStacks", _Stack.describe_stacks),
                     ("before-call.cloudformation.DescribeStackResources", _Stack.describe_stack_resources)):
            if hook not in BUILTIN_HANDLERS:  # read by every client created from here on
                BUILTIN_HANDLERS.append(hook)
        full._offline_supported_regions()
        full.managed_policies_parsed_once()
        import logging

        logging.disable(logging.WARNING)  # pcluster logs each expected refusal; the JSON carries them
        return [validate_update(case) for case in cases]


def _ok(result: dict[str, Any]) -> bool:
    return not result["blocked_network"] and all(r["verdict"] in ("allowed", "no-change")
                                                 for r in result["runs"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, nargs="?", help="`tools.plan --out` directory of the deployed stack")
    parser.add_argument("target", type=Path, nargs="?", help="`tools.plan --out` directory of the changed stack")
    parser.add_argument("--cluster-name")
    parser.add_argument("--fleet", choices=("running", "stopped"), help="compute fleet state (default: both)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--batch", action="store_true",
                        help='read {"cases": [{"id", "base", "target", "clusterName", "fleets"}]} on stdin, '
                             'print {"results": [...], "seconds"}')
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.batch:
            results = validate_updates(json.load(sys.stdin)["cases"])
            print(json.dumps({"results": results, "seconds": round(time.perf_counter() - started, 2)}))
            return 0 if all(_ok(r) for r in results) else 1
        if not (args.base and args.target and args.cluster_name):
            parser.error("give BASE and TARGET plan directories and --cluster-name (or --batch)")
        fleets = [args.fleet.upper()] if args.fleet else list(FLEETS)
        (result,) = validate_updates([{"id": None, "base": str(args.base), "target": str(args.target),
                                       "clusterName": args.cluster_name, "fleets": fleets}])
    except ImportError as exc:
        print(f"validate_cluster_update: {exc}; run this with the ParallelCluster venv's python, with moto"
              " (bash tools/pcluster_venv.sh --with-moto)", file=sys.stderr)
        return 2
    except (OSError, KeyError, ValueError, full.WorldError) as exc:
        print(f"validate_cluster_update: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the world could not be built (a moto refusal): an internal error, not a verdict
        import traceback

        traceback.print_exc()
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for fleet, run in result["runs"].items():
            print(f"compute fleet {fleet}: {run['verdict'].upper()} {run['message']}".rstrip())
            for f in run["failures"]:
                print(f"  {f['level']}: {f['type']}: {f['message']}")
            for e in run["updateValidationErrors"]:
                print(f"  refused: {e['parameter']}: {e['current_value']} -> {e['requested_value']}: {e['message']}")
        for host in result["blocked_network"]:
            print(f"ERROR: the validation tried to reach {host} (refused: it must stay offline)")
        for note in result["not_checked"]:
            print(f"NOT CHECKED: {note}")
        print(f"({result['seconds']} s)")
    return 0 if _ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
