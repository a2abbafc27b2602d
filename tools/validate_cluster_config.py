#!/usr/bin/env python3
"""Offline schema check of a ParallelCluster 3 cluster config, with the real ParallelCluster schema.

Run it with the ParallelCluster venv's interpreter (tools/pcluster_venv.sh), never the project venv:

    .venv-pcluster/bin/python tools/validate_cluster_config.py FILE|- --cluster-name NAME --region REGION [--json]

It parses the YAML the way `pcluster` does (duplicate keys rejected), loads it with
`pcluster.schemas.cluster_schema.ClusterSchema(cluster_name=NAME)` and runs the offline cluster-name check.
It makes no AWS call: any attempt is blocked and reported as an error. Semantic checks that need AWS
(subnets exist, instance types, AMIs, ...) are `pcluster create-cluster --dryrun true`'s job.

Exit codes: 0 valid (prints "OK"), 1 invalid (prints one "path: message" line per error), 2 usage or internal error.
With --json, stdout is one JSON object: {"ok": bool, "errors": ["path: message", ...]}.
With --batch (no FILE), stdin is a JSON list of {"text", "cluster_name", "region"} and stdout a JSON list of
error lists, one per item (one interpreter start for many configs); exit 0 when all are valid, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def flatten_messages(messages, path: str = "") -> list[str]:
    """Turn marshmallow's nested error dict into sorted 'A.B[0].C: message' lines."""
    out: list[str] = []
    if isinstance(messages, dict):
        for key in sorted(messages, key=str):
            if key == "_schema":
                sub = path
            elif isinstance(key, int):
                sub = f"{path}[{key}]"
            else:
                sub = f"{path}.{key}" if path else str(key)
            out.extend(flatten_messages(messages[key], sub))
    elif isinstance(messages, (list, tuple)):
        if all(isinstance(m, str) for m in messages):
            out.extend(f"{path or '<config>'}: {m}" for m in messages)
        else:
            for item in messages:
                out.extend(flatten_messages(item, path))
    else:
        out.append(f"{path or '<config>'}: {messages}")
    return out


def _block_aws_calls() -> None:
    """Make any botocore API call fail loudly: this check must stay offline."""
    try:
        from botocore.client import BaseClient
    except ImportError:  # pragma: no cover - botocore is a pcluster dependency
        return

    def _refuse(self, operation_name, api_params):
        service = self.meta.service_model.service_name
        raise RuntimeError(f"offline validation attempted an AWS call: {service}.{operation_name}")

    BaseClient._make_api_call = _refuse


def validate_text(text: str, cluster_name: str, region: str) -> list[str]:
    """Return the list of schema errors ('path: message'); empty when the config is valid."""
    os.environ["AWS_DEFAULT_REGION"] = region
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    _block_aws_calls()

    import yaml
    from marshmallow import ValidationError
    from pcluster.schemas.cluster_schema import ClusterSchema
    from pcluster.utils import yaml_load

    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        return [f"<yaml>: not a valid YAML document: {exc}"]
    if not isinstance(data, dict):
        return [f"<config>: the document must be a mapping, got {type(data).__name__}"]

    try:
        config = ClusterSchema(cluster_name=cluster_name).load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return flatten_messages(messages)

    errors: list[str] = []
    try:
        from pcluster.validators.cluster_validators import ClusterNameValidator

        for failure in ClusterNameValidator().execute(name=cluster_name, scheduling=config.scheduling):
            errors.append(f"<cluster-name>: {failure.message}")
    except ImportError:  # pragma: no cover - present in every 3.x
        pass
    return errors


def _validate_or_describe(text: str, cluster_name: str, region: str) -> list[str]:
    try:
        return validate_text(text, cluster_name, region)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the schema's post-load hooks may raise plain exceptions
        return [f"<config>: {type(exc).__name__}: {exc}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", help="cluster config YAML, or - for stdin")
    parser.add_argument("--cluster-name")
    parser.add_argument("--region")
    parser.add_argument("--json", action="store_true", help="print {ok, errors} as JSON")
    parser.add_argument("--batch", action="store_true", help="JSON list of {text, cluster_name, region} on stdin")
    args = parser.parse_args(argv)
    if args.batch:
        if args.file or args.cluster_name or args.region:
            parser.error("--batch takes no FILE, --cluster-name or --region")
    elif not (args.file and args.cluster_name and args.region):
        parser.error("FILE, --cluster-name and --region are required")

    try:
        if args.batch:
            items = json.load(sys.stdin)
            results = [_validate_or_describe(i["text"], i["cluster_name"], i["region"]) for i in items]
            print(json.dumps(results))
            return 1 if any(results) else 0
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
        errors = _validate_or_describe(text, args.cluster_name, args.region)
    except OSError as exc:
        print(f"validate_cluster_config: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as exc:
        print(f"validate_cluster_config: bad --batch input: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"validate_cluster_config: {exc}; run this with the ParallelCluster venv's python "
            "(tools/pcluster_venv.sh prints its pcluster path)",
            file=sys.stderr,
        )
        return 2

    if args.json:
        print(json.dumps({"ok": not errors, "errors": errors}))
    elif errors:
        print(f"INVALID: {len(errors)} error(s) in the cluster config:")
        for line in errors:
            print(f"  {line}")
    else:
        print("OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
