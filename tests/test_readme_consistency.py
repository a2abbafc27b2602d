"""README facts that drift from the code unless a test holds them together."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_configuration_table_is_one_table():
    """A paragraph inside the table makes every row after it render as text."""
    lines = section("Configuration reference").splitlines()
    header = lines.index("| key | default | rule / meaning |")
    rows = []
    for line in lines[header:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    keys = [line for line in lines if line.startswith("| `pcluster-ad:") or line.startswith("| `aws:")]
    assert keys and set(keys) <= set(rows), "rows after the table's end: " + str([k for k in keys if k not in rows])
    assert any(r.startswith("| `pcluster-ad:cluster.") for r in rows)


def test_node_version_is_the_same_everywhere():
    """The launcher's error messages decide: README, deploy.sh and pcluster_venv.sh say the same."""
    launcher = set(re.findall(r"Node\.js (\d+)\+", (ROOT / "launcher" / "core.py").read_text()))
    assert len(launcher) == 1
    (version,) = launcher
    assert re.findall(r"Node\.js (\d+)\+", README.read_text()) == [version]
    for script in ("scripts/deploy.sh", "tools/pcluster_venv.sh"):
        assert set(re.findall(r"Node\.js (\d+) or newer", (ROOT / script).read_text())) == {version}, script


def test_readme_states_no_test_count_that_goes_stale():
    """Issue 19: "749 tests in 9 min" was wrong a commit later. Durations are kept, counts are not."""
    assert not re.findall(r"\b\d[\d,]* (?:tests|test cases|passed)\b", README.read_text())
