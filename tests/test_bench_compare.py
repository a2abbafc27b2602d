"""bench --compare-with: the older join chain (script AND function) of a git revision, served beside today's."""

from __future__ import annotations

import sys

import pytest

from bench import adlab_bench
from tests.adlab import labsvc


def test_before_handler_is_the_revisions_own_function(tmp_path):
    # ecefcfa is issue 12's baseline: the function answered the join account's password (no caller proof).
    handlers = adlab_bench.before_handler("ecefcfa", tmp_path)
    assert list(handlers) == ["/" + adlab_bench.BEFORE_PATH]
    mod = labsvc._load_handler(handlers["/before/"], "join_handler_test_alt")
    try:
        assert hasattr(mod, "handle") and hasattr(mod, "load_settings")
        assert not hasattr(mod, "PROOF_AUDIENCE")  # the caller proof came later (issue 16's attack review)
        assert sys.modules.get("join_handler") is not mod  # today's handler keeps its module name
    finally:
        sys.modules.pop("join_handler_test_alt", None)


def test_before_handler_unknown_revision_fails(tmp_path):
    with pytest.raises(Exception, match="git"):
        adlab_bench.before_handler("no-such-rev-0000", tmp_path)


def test_node_os_must_be_a_generation(capsys):
    with pytest.raises(SystemExit):
        adlab_bench.main(["--node-os", "debian11"])
    assert "debian12" in capsys.readouterr().err
