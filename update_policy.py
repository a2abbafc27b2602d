"""Which changes of the rendered cluster config need a NEW cluster, per ParallelCluster's own update policy.

tools/update_policy.json is generated in the ParallelCluster venv by tools/update_policy_snapshot.py from
pcluster's schema and update-policy checks (the project venv cannot import pcluster); a test regenerates it
and fails when it differs. `replacement_view(config)` keeps only the values whose change ParallelCluster
refuses even with the fleet stopped (class "replace"), walking the config the way its ConfigPatch does:

- a field of class replace: its value is kept;
- a nested section: kept as a whole-section marker when adding/removing it is refused (e.g. the head
  node's OnNodeConfigured), its inner replace fields always; IGNORED sections are compared field by field;
- a list (queues, compute resources, storage, tags): items keyed by their update key (their Name, ...)
  which is left out (items are matched by it); an item whose view is empty is left out unless adding or
  removing items is refused, so adding a queue changes nothing here.
- a key the schema does not know: kept (unknown means "could be refused").

Two configs with equal views update in place; different views need a replacement. The ClusterLauncher
puts the view's digest in the pcluster Command's `triggers`, so `pulumi preview` shows the replacement.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).resolve().parent / "tools" / "update_policy.json"
REPLACE = "replace"


@lru_cache(maxsize=1)
def snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


def _field(path: str) -> dict | None:
    return snapshot()["fields"].get(path)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# Left out of the view: the login pools' custom actions. ParallelCluster adds (and, with the pool stopped,
# removes) a whole pool in place, custom actions included; a projection cannot tell "added with the pool" from
# "changed", so it would replace the cluster for a new pool. Nothing is lost: this stack renders them from the
# same values as the head node's (same script URI, Args, OnNodeConfigured present iff sshPasswordAuth), which
# ARE in the view, so any change of them already replaces (tests/test_site_config.py checks the renders agree).
COVERED_BY_HEAD_NODE = frozenset({"LoginNodes.Pools[].CustomActions"})


def _view_section(section: dict, prefix: str) -> dict:
    view: dict[str, Any] = {}
    for key, value in section.items():
        path = _join(prefix, key)
        if path in COVERED_BY_HEAD_NODE:
            continue
        list_field = _field(f"{path}[]")
        field = _field(path)
        if list_field is not None and isinstance(value, list):
            items = _view_list(value, f"{path}[]", list_field)
            if items:
                view[key] = items
        elif field is None:
            view[key] = value  # not in the schema snapshot: assume ParallelCluster would refuse it
        elif field.get("section") and isinstance(value, dict):
            inner = _view_section(value, path)
            refused = REPLACE in (field.get("add"), field.get("remove"))
            if refused or inner:
                view[key] = {"present": True, **inner} if refused else inner
        elif field.get("change") == REPLACE:
            view[key] = value
    return view


def _view_list(items: list, path: str, field: dict) -> dict | list:
    key = field.get("updateKey")
    if not key or not all(isinstance(item, dict) and key in item for item in items):
        return items if REPLACE in (field.get("add"), field.get("remove")) else []
    refused = REPLACE in (field.get("add"), field.get("remove"))
    view = {}
    for item in items:
        inner = _view_section({k: v for k, v in item.items() if k != key}, path)
        if inner or refused:
            view[str(item[key])] = inner
    return view


def replacement_view(config: dict) -> dict:
    """The part of a rendered cluster config whose change ParallelCluster refuses in place."""
    return _view_section(config, "")


def replacement_digest(config: dict) -> str:
    """sha256 of the replacement view: equal digests update in place, different ones replace."""
    text = json.dumps(replacement_view(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def needs_replacement(before: dict, after: dict) -> bool:
    return replacement_digest(before) != replacement_digest(after)
