"""BootstrapScripts: a private S3 bucket holding the node scripts from bootstrap/.

Nodes download their custom-action scripts at every boot, so a changed script reaches
every node started after `pulumi up` (the object is replaced when its content hash changes).

The head node's custom actions (Script, Args) cannot change without a new cluster, so nothing in them
may change without a real change: the bucket has a fixed name (account, region, stack: the same after
a re-creation), and the join function URL is baked into the uploaded copy of the join script (a
recreated function changes that object, not the cluster config).
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import re
import shlex
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws

SCRIPTS_PREFIX = "bootstrap"
BAKED_URL_LINE = 'BAKED_FUNCTION_URL=""'  # the marked default line in bootstrap/join-domain.sh
# pcluster-ad:access, baked the same way: a changed group list changes the S3 object, never the cluster config.
BAKED_GROUP_LINES = {"allowed": 'BAKED_ALLOWED_GROUPS=""', "admin": 'BAKED_ADMIN_GROUPS=""'}
# The cluster's VPC CIDR, baked the same way: the ssh key made for an AD user (MPI) opens the account only from
# inside the VPC (from="CIDR" on its authorized_keys line). A new CIDR changes the S3 object only.
BAKED_VPC_CIDR_LINE = 'BAKED_VPC_CIDR=""'
BAKED_STACK_GROUP_LINES = {"users": 'BAKED_STACK_USERS_GROUP=""', "admins": 'BAKED_STACK_ADMINS_GROUP=""'}
# join-domain.sh checks the same
_STACK_USERS_DN_RE = re.compile(r"CN=[A-Za-z0-9 _.-]+(,(OU|CN)=[A-Za-z0-9 _.-]+)*(,DC=[A-Za-z0-9-]+)+")
_STACK_ADMINS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,19}")
_URL_RE = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/%-]*)?")  # nothing the shell expands


def bootstrap_bucket_name(account_id: str, region: str, stack: str) -> str:
    """pcluster-ad-<stack>-<account>-<region>: a valid S3 name (<= 63, lower-case), the same every time for
    one stack, so the head node's Script URI survives a bucket re-creation. A stack name that had to be
    shortened or cleaned up gets a short hash of the original, so two stacks never share a name. The
    offline plan's account placeholder (<after-deploy:...>) is passed through as it is."""
    placeholder = account_id.startswith("<after-deploy:")
    if not (placeholder or re.fullmatch(r"[0-9]{12}", account_id)):
        raise ValueError(f"not an AWS account id: {account_id!r}")
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]+", region):
        raise ValueError(f"not an AWS region name: {region!r}")
    room = 63 - len("pcluster-ad-") - len(f"-123456789012-{region}")
    clean = re.sub(r"[^a-z0-9-]+", "-", stack.lower()).strip("-") or "stack"
    if clean != stack or len(clean) > room:
        digest = hashlib.sha256(stack.encode()).hexdigest()[:6]
        clean = f"{clean[: max(1, room - 7)].strip('-')}-{digest}"
    return f"pcluster-ad-{clean}-{account_id}-{region}"


def _require_marked_line(script: str, line: str) -> None:
    """Every bake sets one marked line of the join script: it must be there, exactly once."""
    if script.count(line + "\n") != 1:
        raise ValueError(f"the join script must contain the line {line!r} exactly once")


def bake_function_url(script: str, url: str) -> str:
    """The script with its marked default line set to the join function URL."""
    _require_marked_line(script, BAKED_URL_LINE)
    if not (_URL_RE.fullmatch(url) or re.fullmatch(r"<after-deploy:[A-Za-z0-9.-]+>", url)):  # offline plan
        raise ValueError(f"the join function URL is not a plain https:// URL: {url!r}")
    return script.replace(BAKED_URL_LINE + "\n", f"BAKED_FUNCTION_URL='{url}'\n", 1)


def bake_access_groups(script: str, allowed: Sequence[str], admin: Sequence[str]) -> str:
    """The script with its marked access lines set to the group lists: comma-separated (AD group names cannot
    hold commas; stack_config checked them), shell-quoted (names may hold spaces, quotes, $ ...)."""
    for kind, groups in (("allowed", allowed), ("admin", admin)):
        line = BAKED_GROUP_LINES[kind]
        _require_marked_line(script, line)
        for group in groups:
            if not group.strip() or any(c in group for c in ",\n\r"):
                raise ValueError(f"not a valid AD group name to bake: {group!r}")
        value = shlex.quote(",".join(groups)) if groups else '""'
        script = script.replace(line + "\n", f"{line.split('=', 1)[0]}={value}\n", 1)
    return script


def bake_stack_access_groups(script: str, users_dn: str | None, admins: str | None) -> str:
    """The script with the stack's access groups (DirectoryAdmin, issue 18) baked: the users group's DN and the
    admins group's name. None leaves both lines empty (no DirectoryAdmin: the baked lists decide)."""
    for line in BAKED_STACK_GROUP_LINES.values():
        _require_marked_line(script, line)
    if not users_dn and not admins:
        return script
    if not (users_dn and _STACK_USERS_DN_RE.fullmatch(users_dn)):
        raise ValueError(f"not a stack users group DN to bake: {users_dn!r}")
    if not (admins and _STACK_ADMINS_RE.fullmatch(admins)):
        raise ValueError(f"not a stack admins group name to bake: {admins!r}")
    for key, value in (("users", users_dn), ("admins", admins)):
        line = BAKED_STACK_GROUP_LINES[key]
        script = script.replace(line + "\n", f"{line.split('=', 1)[0]}={shlex.quote(value)}\n", 1)
    return script


BAKED_ID_MODE_LINE = 'BAKED_ID_MODE=""'
ID_MODES = ("idmap", "rfc2307")


def bake_id_mode(script: str, mode: str) -> str:
    """The script with pcluster-ad:identity.mode baked: how nodes find UIDs/GIDs (issue 18)."""
    _require_marked_line(script, BAKED_ID_MODE_LINE)
    if mode not in ID_MODES:
        raise ValueError(f"not an ID mode to bake: {mode!r} (idmap or rfc2307)")
    return script.replace(BAKED_ID_MODE_LINE + "\n", f"BAKED_ID_MODE={mode}\n", 1)


def bake_vpc_cidr(script: str, cidr: str | None) -> str:
    """The script with its marked VPC CIDR line set to `cidr`: an IPv4 network in canonical form (what sshd's
    from="..." takes: no host bits set). None or "" leaves the line as it is (then no from= restriction)."""
    _require_marked_line(script, BAKED_VPC_CIDR_LINE)
    if not cidr:
        return script
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise ValueError(f"not an IPv4 CIDR block to bake as the VPC CIDR: {cidr!r} ({e})") from None
    if str(net) != cidr:
        raise ValueError(f"not an IPv4 CIDR block in canonical form to bake as the VPC CIDR: {cidr!r} (use {net})")
    return script.replace(BAKED_VPC_CIDR_LINE + "\n", f"BAKED_VPC_CIDR='{net}'\n", 1)


# The node agent (bootstrap/node_agent/), baked into the join script as a base64 zipapp on this line: the script and
# its Python travel as one S3 object, one version. Named, not globbed: a checkout may hold other files there.
NODE_AGENT_LINE = 'NODE_AGENT_ZIP=""'
NODE_AGENT_DIR = "node_agent"  # beside the script
NODE_AGENT_MODULES = ("__init__.py", "__main__.py", "access.py", "common.py", "files.py", "function_api.py", "httpc.py",
                      "imds.py", "imds_lockdown.py", "join.py", "join_client.py", "node.py", "pam.py", "sigv4.py",
                      "ssh_keys.py", "sssd_config.py", "sssd_service.py")
# The zipapp's own entry (`python3 -I node-agent.pyz COMMAND ...`); the script itself imports node_agent.__main__.
NODE_AGENT_ZIPAPP_MAIN = b"from node_agent.__main__ import main\nmain()\n"


def node_agent_zip(agent_dir: Path) -> bytes:
    """The node agent as a zipapp, the same bytes for the same sources on any machine (the upload's hash is stable
    between plans): names sorted, fixed timestamps and modes, stored uncompressed (zlib builds differ in output)."""
    files = {"__main__.py": NODE_AGENT_ZIPAPP_MAIN}
    for name in NODE_AGENT_MODULES:
        path = agent_dir / name
        if not path.is_file():
            raise ValueError(f"the node agent module {path} is missing: the join script needs every file of "
                             f"{NODE_AGENT_MODULES} in {agent_dir}")
        files[f"node_agent/{name}"] = path.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system, info.external_attr = 3, 0o644 << 16  # unix, rw-r--r--
            zf.writestr(info, files[name])
    return buf.getvalue()


def bake_node_agent(script: str, agent_dir: Path) -> str:
    """The script with its marked node agent line set to the zipapp of `agent_dir`, base64 (no shell quoting
    needed: [A-Za-z0-9+/=] only)."""
    _require_marked_line(script, NODE_AGENT_LINE)
    encoded = base64.b64encode(node_agent_zip(agent_dir)).decode("ascii")
    return script.replace(NODE_AGENT_LINE + "\n", f"NODE_AGENT_ZIP='{encoded}'\n", 1)


@dataclass
class BootstrapScriptsArgs:
    script_paths: list[str]  # local files, uploaded under bootstrap/<file name>
    bucket_name: pulumi.Input[str]  # bootstrap_bucket_name(...): fixed for the stack
    # The join function URL, baked into the uploaded copy of the script named function_url_script.
    function_url: pulumi.Input[str] | None = None
    function_url_script: str | None = None
    # pcluster-ad:access, baked into the same script: who may log in (empty: every domain user), who gets sudo.
    allowed_groups: Sequence[str] = ()
    admin_groups: Sequence[str] = ()
    # The VPC's IPv4 CIDR, baked into the same script: the generated ssh keys work only from inside the VPC.
    # None: not baked (no from= restriction; the node logs it).
    vpc_cidr: pulumi.Input[str] | None = None
    # The stack's access groups (DirectoryAdmin.access_users_group_dn / access_admins_group); None: no DirectoryAdmin.
    stack_users_group_dn: str | None = None
    stack_admins_group: str | None = None
    # pcluster-ad:identity.mode, baked into the same script: idmap (UIDs from SIDs) or rfc2307 (uidNumber/gidNumber).
    id_mode: str = "idmap"
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
            bucket=args.bucket_name,
            force_destroy=args.force_destroy,
            tags={**args.tags, "Name": f"{name}-bucket"},
        ), pulumi.ResourceOptions(parent=self, delete_before_replace=True))  # the name is fixed
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
            if args.function_url is not None and file.name == args.function_url_script:
                text = file.read_text(encoding="utf-8")
                # Same key, new content when the script or the URL changes.
                text = bake_node_agent(bake_id_mode(text, args.id_mode), file.parent / NODE_AGENT_DIR)
                body = dict(content=pulumi.Output.all(args.function_url, args.vpc_cidr).apply(
                    lambda v, text=text: bake_stack_access_groups(
                        bake_vpc_cidr(bake_access_groups(bake_function_url(text, v[0]), args.allowed_groups,
                                                         args.admin_groups), v[1]),
                        args.stack_users_group_dn, args.stack_admins_group)))
            else:
                # Content hash: a changed script is uploaded again even if its size is unchanged.
                body = dict(source=pulumi.FileAsset(str(file)),
                            source_hash=hashlib.sha256(file.read_bytes()).hexdigest())
            self.objects.append(aws.s3.BucketObjectv2(f"{name}-{file.stem}", aws.s3.BucketObjectv2Args(
                bucket=bucket.id,
                key=f"{SCRIPTS_PREFIX}/{file.name}",
                content_type="text/x-python" if file.suffix == ".py" else "text/x-shellscript",
                **body,
            ), child))

        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn
        self.scripts_base_uri = pulumi.Output.concat("s3://", bucket.bucket, f"/{SCRIPTS_PREFIX}")
        self.register_outputs({
            "bucketName": self.bucket_name,
            "bucketArn": self.bucket_arn,
            "scriptsBaseUri": self.scripts_base_uri,
        })
