"""Issue 21's yardsticks (bench/yardsticks.py): the peer's sssd.conf as ParallelCluster's cookbook renders it, and the
product / yardstick ratios with their verdicts."""

from __future__ import annotations

import math

import pytest

from bench import adlab_bench, yardsticks

PROPS = dict(domain_name="test.domain", domain_addr="ldaps://dc1.test.domain",
             read_only_user="CN=pcluster-ro,CN=Users,DC=test,DC=domain", password="s3cret",
             tls_ca_cert="/etc/sssd/ca.pem")


def test_render_is_the_cookbooks_file_with_sorted_properties():
    text = yardsticks.render_pcluster_sssd_conf(yardsticks.pcluster_domain_properties(**PROPS))
    assert text == """[domain/default]
cache_credentials = True
default_shell = /bin/bash
fallback_homedir = /home/%u
id_provider = ldap
ldap_default_authtok = s3cret
ldap_default_bind_dn = CN=pcluster-ro,CN=Users,DC=test,DC=domain
ldap_id_mapping = True
ldap_referrals = False
ldap_schema = AD
ldap_search_base = DC=test,DC=domain
ldap_tls_cacert = /etc/sssd/ca.pem
ldap_tls_reqcert = hard
ldap_uri = ldaps://dc1.test.domain
use_fully_qualified_names = False

[domain/local]
id_provider = files
enumerate = True

[sssd]
config_file_version = 2
services = nss, pam, ssh
domains = default, local
full_name_format = %1$s

[nss]
filter_users = nobody,root
filter_groups = nobody,root

[pam]
offline_credentials_expiration = 7
"""


def test_render_refuses_a_template_it_does_not_know():
    with pytest.raises(ValueError, match="unknown ERB tag"):
        yardsticks.render_pcluster_sssd_conf({}, "[domain/default]\n<%= @other %>\n")
    bad_loop = "<% @domain_properties.each do |param, value| %>\n<%= param %>\n<% end %>\n"
    with pytest.raises(ValueError, match="unknown loop body"):
        yardsticks.render_pcluster_sssd_conf({}, bad_loop)


def test_domain_properties_follow_the_recipe():
    p = yardsticks.pcluster_domain_properties(**{**PROPS, "domain_name": "DC=corp,DC=example,DC=com",
                                                 "domain_addr": "dc1.test.domain,ldap://10.0.0.2",
                                                 "access_filter": "memberOf=CN=hpc,CN=Users,DC=test,DC=domain",
                                                 "additional": {"ldap_referrals": "True"}})
    assert p["ldap_search_base"] == "DC=corp,DC=example,DC=com"  # a DN is taken as is
    assert p["ldap_uri"] == "ldaps://dc1.test.domain,ldap://10.0.0.2"  # no scheme: ldaps, as the recipe assumes
    assert (p["access_provider"], p["ldap_access_filter"]) == ("ldap", "memberOf=CN=hpc,CN=Users,DC=test,DC=domain")
    assert p["ldap_referrals"] == "True"  # AdditionalSssdConfigs win over the defaults
    assert "ldap_tls_cacert" not in yardsticks.pcluster_domain_properties(**{**PROPS, "tls_ca_cert": None})
    with pytest.raises(ValueError, match="DomainName"):
        yardsticks.pcluster_domain_properties(**{**PROPS, "domain_name": ""})
    with pytest.raises(ValueError, match="DomainAddr"):
        yardsticks.pcluster_domain_properties(**{**PROPS, "domain_addr": ""})


def test_judge_ratios_and_verdicts():
    assert yardsticks.judge(1.2, 1.0, 1.2) == (pytest.approx(1.2), "yes")  # the goal itself is met
    assert yardsticks.judge(1.3, 1.0, 1.2)[1] == "no"
    assert yardsticks.judge(0.5, 2.0, 1.0) == (0.25, "yes")
    assert yardsticks.judge(2.0, 1.0, None) == (2.0, "no goal")
    for product, yard in ((float("nan"), 1.0), (1.0, float("nan")), (1.0, 0.0)):
        ratio, verdict = yardsticks.judge(product, yard, 1.0)
        assert math.isnan(ratio) and verdict == "n/a"


def test_yardstick_row_and_table():
    row = yardsticks.yardstick_row("join p50", 2.189, 1.773, 1.2, "floor")
    assert row == ("join p50", "2189 ms", "1773 ms", "1.23x", "product <= 1.20x floor", "no")
    assert yardsticks.yardstick_row("x", float("nan"), 1.0, 1.0, "peer")[1:4] == ("-", "1000 ms", "-")
    table = yardsticks.markdown_table(yardsticks.YARD_HEADER, [row]).splitlines()
    assert table[0].count("|") == table[1].count("|") == table[2].count("|") == 7
    assert table[2].endswith("| no |")


def test_floor_command_carries_no_password():
    argv = yardsticks.floor_join_argv("svc-pcjoin", "test.domain")
    assert argv[-2:] == ["svc-pcjoin", "test.domain"]
    assert "realm join" in argv[2] and "systemctl restart sssd" in argv[2]
    assert yardsticks.floor_steps("Password for svc-pcjoin:\n612000000 150000000\n") == (0.612, 0.15)
    with pytest.raises(ValueError, match="no step times"):
        yardsticks.floor_steps("realm: Couldn't join realm")
    assert yardsticks.floor_user("alice", "test.domain") == "alice@test.domain"


def test_same_id_ignores_case_and_order():
    a = "uid=1(manyuser) gid=5(Domain Users) groups=5(Domain Users),7(mgrp0000),8(mgrp0001)"
    b = "uid=1(manyuser) gid=5(domain users) groups=5(domain users),8(mgrp0001),7(mgrp0000)"
    assert yardsticks.same_id(a, b).startswith("same")
    assert "DIFFER" in yardsticks.same_id(a, b.replace("8(mgrp0001)", "9(mgrp0001)"))
    assert "missing" in yardsticks.same_id("", b)


def test_bench_yardstick_rows_judge_the_after_side():
    after = {"join": [2.0, 2.2, 2.4], "id": [0.3, 0.4, 0.5], "login": [1.0, 1.1, 1.2], "id_out": "uid=1(u)"}
    y = {"floor_join": [1.9, 2.0, 2.1], "peer_id": [2.0, 3.0, 4.0], "peer_login": [0.9, 1.0, 1.1],
         "peer_id_rc": {0}, "peer_login_rc": {0}, "peer_id_out": "uid=1(u)"}
    rows = adlab_bench.yardstick_rows(after, y, joins=3, reps=3)
    assert [r[-1] for r in rows] == ["yes", "no goal", "no goal", "yes", "no"]  # 2.2/2.0; -; steps; 0.4/3; 1.1/1
    assert rows[4][3] == "1.10x"
    y["floor_steps"] = [{"realm_join": 0.6, "sssd_start": 0.2, "first_lookup": 0.1}]
    assert adlab_bench.yardstick_rows(after, y, joins=3, reps=3)[2][2] == "600 / 200 / 100 ms"


def test_yardsticks_need_compare_with(capsys):
    with pytest.raises(SystemExit):
        adlab_bench.main(["--yardsticks"])
    assert "--compare-with" in capsys.readouterr().err
