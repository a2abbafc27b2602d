"""join-domain.sh --id-mode (issue 18, stable POSIX identities): what sssd.conf gets in each mode, the switch of a
joined node (sssd's cache dropped: it holds the other mode's numbers), the baked default, bad values. The real sssd
reading these settings against the Samba DC: tests/adlab/test_identity_rfc2307.py."""

from __future__ import annotations

import configparser

import pytest

from pcluster_ad.components.bootstrap_scripts import bake_id_mode, bake_node_agent
from tests.bootstrap_sandbox.sandbox import AGENT_DIR, JOIN_SCRIPT
from tests.test_access_script import box, join  # noqa: F401 - fixture

DOMAIN = "domain/test.domain"


def domain_section(box) -> dict[str, str]:  # noqa: F811
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(box.sssd_conf().read_text())
    return dict(conf[DOMAIN])


def test_default_is_id_mapping(box):  # noqa: F811
    result = join(box)
    assert result.rc == 0, result.output
    section = domain_section(box)
    assert section["ldap_id_mapping"] == "True" and "auto_private_groups" not in section
    assert "IDs: idmap" in result.output


def test_rfc2307_reads_the_directory_numbers_with_a_private_group_per_user(box):  # noqa: F811
    result = join(box, "--id-mode", "rfc2307")
    assert result.rc == 0, result.output
    section = domain_section(box)
    assert section["ldap_id_mapping"] == "False" and section["auto_private_groups"] == "hybrid", section
    assert section["override_homedir"] == "/home/%u"  # not the directory's unixHomeDirectory
    assert section["min_id"] == "2000"  # no directory number shadows a local account (the default user 1000)
    # ...nor a local group in a member's group list (min_id does not filter those: attack finding 1b)
    assert section["ldap_group_search_base"] == "DC=test,DC=domain??(gidNumber>=2000)"
    # A fresh node has no cache to drop.
    assert "cache dropped" not in result.output


def cache_files(box) -> list[str]:  # noqa: F811
    db, mc = box.root / "var" / "lib" / "sss" / "db", box.root / "var" / "lib" / "sss" / "mc"
    mc.mkdir(parents=True, exist_ok=True)
    for f in (db / "cache_test.domain.ldb", db / "timestamps_test.domain.ldb", db / "config.ldb",
              mc / "passwd", mc / "initgroups"):
        f.write_bytes(b"cached")
    return sorted(p.name for d in (db, mc) for p in d.iterdir())


def test_a_switch_on_a_joined_node_drops_sssds_cache_and_back(box):  # noqa: F811
    box.mark_joined()
    assert join(box).rc == 0  # idmap, as the node was
    cache_files(box)
    result = join(box, "--id-mode", "rfc2307")
    assert result.rc == 0, result.output
    assert "ID mode changed: cache dropped" in result.output
    left = sorted(p.name for d in ("db", "mc") for p in (box.root / "var" / "lib" / "sss" / d).iterdir())
    assert left == ["config.ldb"], left  # sssd's own configuration database stays
    assert domain_section(box)["ldap_id_mapping"] == "False"
    # The same mode again: nothing dropped.
    cache_files(box)
    again = join(box, "--id-mode", "rfc2307")
    assert again.rc == 0 and "cache dropped" not in again.output
    # Back to idmap: dropped again, and the private-group setting goes (sssd's default for ID mapping).
    back = join(box, "--id-mode", "idmap")
    assert back.rc == 0 and "ID mode changed: cache dropped" in back.output
    section = domain_section(box)
    assert section["ldap_id_mapping"] == "True" and "auto_private_groups" not in section
    assert not {"override_homedir", "min_id", "ldap_group_search_base"} & set(section)


def test_the_baked_mode_is_the_default_and_the_argument_wins(box, tmp_path):  # noqa: F811
    baked = tmp_path / "join-domain.sh"
    baked.write_text(bake_id_mode(JOIN_SCRIPT.read_text(), "rfc2307"))
    baked.write_text(bake_node_agent(baked.read_text(), AGENT_DIR))  # as the stack uploads it
    baked.chmod(0o755)
    result = join(box, script=baked)
    assert result.rc == 0, result.output
    assert domain_section(box)["ldap_id_mapping"] == "False"
    assert join(box, "--id-mode", "idmap", script=baked).rc == 0
    assert domain_section(box)["ldap_id_mapping"] == "True"


@pytest.mark.parametrize("mode", ["RFC2307", "posix", "idmap;id"])
def test_a_bad_mode_is_a_usage_error_before_anything_is_written(box, mode):  # noqa: F811
    result = join(box, "--id-mode", mode)
    assert result.rc == 2 and "argument --id-mode must be idmap or rfc2307" in result.output, result.output
    assert not box.sssd_conf().exists()


def test_an_empty_mode_means_the_baked_default(box):  # noqa: F811
    result = join(box, "--id-mode=")
    assert result.rc == 0, result.output
    assert domain_section(box)["ldap_id_mapping"] == "True"


def test_bake_id_mode_refuses_anything_else():
    script = JOIN_SCRIPT.read_text()
    assert 'BAKED_ID_MODE=rfc2307\n' in bake_id_mode(script, "rfc2307")
    assert bake_id_mode(script, "idmap") == script.replace('BAKED_ID_MODE=""\n', "BAKED_ID_MODE=idmap\n")
    with pytest.raises(ValueError, match="idmap or rfc2307"):
        bake_id_mode(script, "rfc2307; rm -rf /")
