"""Fixtures for the real-AD lab (see lab.py). Every test module here is marked ``adlab``, so
``-m "not adlab"`` deselects the lot (then nothing here starts). The lab lives for one module
(test_join_chain.py) and is torn down, and checked clean, right after it.

The lab needs root and the Debian packages of tools/install_adlab_deps.sh: without them the
tests FAIL (never skip) and say what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator

import pytest

from .lab import BOOTSTRAP_DIR, REPO, BootstrapRun, Lab, LabConfig, LabError, Node, missing_deps

# Time limits (--timeout) given to the product's join script per scenario.
JOIN_TIMEOUT = 240
REFUSED_TIMEOUT = 60
UNREACHABLE_TIMEOUT = 45
SLACK = 20  # allowed beyond a script's own --timeout before we call it a hang

USERS = {
    "alice": "Al1ce-Pw-2026!x",
    "bob": "B0b-Pw-2026!xy",
}
GROUPS = {"hpc-users": ["alice", "bob"], "lab-admins": ["alice"]}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "adlab: real Samba AD lab in network namespaces (root; tools/install_adlab_deps.sh)"
    )


def lab_preflight() -> None:
    """Fail (not skip) with what to do when the lab cannot run here."""
    if os.geteuid() != 0:
        pytest.fail(
            "the AD lab needs root (namespaces, overlays). Run as root, or deselect with -m 'not adlab'.",
            pytrace=False,
        )
    missing = missing_deps()
    if missing:
        pytest.fail(
            "AD lab dependencies are missing; run `sudo bash tools/install_adlab_deps.sh` "
            f"(or deselect with -m 'not adlab'). Missing: {', '.join(missing)}",
            pytrace=False,
        )
    absent = [
        str(p)
        for p in (
            REPO / "lambda_src" / "join_handler.py",
            BOOTSTRAP_DIR / "join-domain.sh",
            BOOTSTRAP_DIR / "enable-ssh-password-auth.sh",
        )
        if not p.exists()
    ]
    if absent:
        pytest.fail(f"product files under test are missing: {', '.join(absent)}", pytrace=False)
    if BOOTSTRAP_DIR != REPO / "bootstrap":
        warnings.warn(f"adlab: node scripts come from ADLAB_BOOTSTRAP_DIR={BOOTSTRAP_DIR}, not the repo", stacklevel=1)


@dataclasses.dataclass
class Chain:
    """The lab with the product's bootstrap started on every scenario node at once."""

    lab: Lab
    good: list[Node]
    untagged: Node
    impostor: Node
    outsiders: list[Node]  # started with the cluster's profile, not from the cluster's launch templates
    unreachable: Node
    runs: dict[str, BootstrapRun]
    started: float
    ssh_enabled: dict[str, object] = dataclasses.field(default_factory=dict)

    def result(self, node: Node):
        return self.runs[node.key].wait()


@contextlib.contextmanager
def running_lab(*, services: bool = True, after_start: Callable[[Lab], None] | None = None,
                client: bool = True, cfg: LabConfig | None = None) -> Iterator[Lab]:
    """The one life cycle of a lab in tests/adlab: preflight, bring-up (`after_start` runs right after the DC
    and, with `services`, the AWS stand-ins are up), the lab's users and groups, an ssh client host (`client`);
    then teardown, and the check that nothing of the lab is left (processes, namespaces, mounts, bridges, links)."""
    lab_preflight()
    t0 = time.monotonic()
    lab = Lab(cfg)
    try:
        try:
            lab.start(services=services)
            if after_start is not None:
                after_start(lab)
        except LabError as exc:
            pytest.fail(f"AD lab did not come up: {exc}", pytrace=False)
        if services and lab.services_info.get("handler_error"):
            pytest.fail(f"the join handler cannot be loaded:\n{lab.services_info['handler_error']}", pytrace=False)
        t1 = time.monotonic()
        lab.populate(
            {
                "users": [{"name": u, "password": p} for u, p in USERS.items()],
                "groups": [{"name": g, "members": m} for g, m in GROUPS.items()],
            }
        )
        lab.timings["users_s"] = round(time.monotonic() - t1, 2)
        if client:
            lab.add_client()
        lab.timings["lab_up_s"] = round(time.monotonic() - t0, 2)
        yield lab
    finally:
        left = lab.teardown()
        print(f"\nadlab timings: {lab.timings}; teardown left: {left or 'nothing'}")
    assert not left, f"the AD lab left things behind: {left}"


@pytest.fixture(scope="module")
def lab():
    with running_lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def chain(lab: Lab) -> Chain:
    t0 = time.monotonic()
    good = lab.add_nodes([{}, {}])
    untagged, unreachable = lab.add_nodes([{"tagged": False}, {"dc_unreachable": True}])
    # An impostor: credentials of another role whose session name is a real node's instance id.
    (impostor,) = lab.add_nodes([{"creds_role": "other", "session_of": good[0]}])
    outsiders = lab.add_nodes([{"launch_template": "none"}, {"launch_template": "foreign"}])
    lab.timings["nodes_up_s"] = round(time.monotonic() - t0, 2)
    started = time.monotonic()
    runs = {n.key: n.start_bootstrap(timeout_arg=JOIN_TIMEOUT) for n in good}
    runs[untagged.key] = untagged.start_bootstrap(timeout_arg=REFUSED_TIMEOUT)
    runs[impostor.key] = impostor.start_bootstrap(timeout_arg=REFUSED_TIMEOUT)
    runs.update({n.key: n.start_bootstrap(timeout_arg=REFUSED_TIMEOUT) for n in outsiders})
    runs[unreachable.key] = unreachable.start_bootstrap(timeout_arg=UNREACHABLE_TIMEOUT)
    return Chain(lab=lab, good=good, untagged=untagged, impostor=impostor, outsiders=outsiders,
                 unreachable=unreachable, runs=runs, started=started)


def describe(res) -> str:
    tail = "\n".join(res.output.splitlines()[-40:])
    return f"rc={res.rc} elapsed={res.elapsed:.1f}s timed_out={res.timed_out}\n--- last output ---\n{tail}"
