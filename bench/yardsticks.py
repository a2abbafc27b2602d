"""Issue 21's two yardsticks for bench --compare-with: how far each product figure is from the best anyone could do.

1. The FLOOR of a join: a bare `realm join` with a password (the lab's classic join account, password on stdin)
   and an sssd start, on the same kind of lab node: no function, no window, no access configuration.
   Goal: the product's join p50 <= 1.2 x the floor's.
2. The PEER: ParallelCluster's own DirectoryService mode on a node that is NOT joined: sssd with
   `id_provider = ldap`, `ldap_schema = AD`, bound as a read-only user, its sssd.conf rendered exactly as the
   cookbook renders it (PCLUSTER_COOKBOOK below). Goal: the product's cold `id` and cold ssh login of the
   200-group user no slower than the peer's.

The pure parts (the cookbook's rendering, the ratios and verdicts) are unit-tested in tests/test_bench_yardsticks.py;
the node parts take a lab Node and are exercised by the bench itself.
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlparse

# Where the peer's sssd.conf comes from (fetched from GitHub; the newest snapshot of the repository at the time).
PCLUSTER_COOKBOOK = {
    "repo": "aws/aws-parallelcluster-cookbook",
    "commit": "f75d84c38ecfac1891e5f3e8fe2d424cc3e7448d",  # develop, 2024-10-21
    "template": "cookbooks/aws-parallelcluster-environment/templates/directory_service/sssd.conf.erb",
    "recipe": "cookbooks/aws-parallelcluster-environment/recipes/config/directory_service.rb",
    "pam": "cookbooks/aws-parallelcluster-environment/resources/system_authentication/partial/"
    "_system_authentication_debian.rb",
}

# The template verbatim (last changed upstream in 65321a10c96e, 2023-06-01). Chef renders it with Erubis, which drops
# lines that hold only a <% %> statement or a <%# %> comment; render_pcluster_sssd_conf does the same.
PCLUSTER_SSSD_ERB = """[domain/default]
<%# Domain properties are added in lexicographic order to make the resulting configuration easier to navigate %>
<% @domain_properties.sort_by { |key| key }.to_h.each_pair do |param, value| %>
<%= "#{param} = #{value}" %>
<% end %>

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

_FQDN = re.compile(r"^([a-zA-Z0-9_-]+)(\.[a-zA-Z0-9_-]+)*$")  # the recipe's FQDN_PATTERN


def pcluster_domain_properties(
    *,
    domain_name: str,
    domain_addr: str,
    read_only_user: str,
    password: str,
    tls_req_cert: str = "hard",
    tls_ca_cert: str | None = None,
    access_filter: str | None = None,
    additional: dict[str, str] | None = None,
) -> dict[str, str]:
    """The [domain/default] properties as the cookbook's directory_service recipe builds them from the cluster
    config's DirectoryService section (DomainName, DomainAddr, DomainReadOnlyUser, PasswordSecretArn's value,
    LdapTlsReqCert, LdapTlsCaCert, LdapAccessFilter, AdditionalSssdConfigs)."""
    if not domain_name:
        raise ValueError("DirectoryService.DomainName is empty: give the domain's FQDN or its DN (DC=...)")
    if not domain_addr:
        raise ValueError("DirectoryService.DomainAddr is empty: give ldaps://dc.example.com (or a bare host name)")
    search_base = ",".join(f"DC={v}" for v in domain_name.split(".")) if _FQDN.match(domain_name) else domain_name
    # An address without a scheme is ldaps, as in the recipe.
    uris = [a if urlparse(a).scheme else f"ldaps://{a}" for a in domain_addr.split(",")]
    props = {
        "id_provider": "ldap",
        "ldap_schema": "AD",
        "ldap_uri": ",".join(uris),
        "ldap_search_base": search_base,
        "ldap_default_bind_dn": read_only_user,
        "ldap_default_authtok": password,
        "ldap_tls_reqcert": tls_req_cert,
        "cache_credentials": "True",
        "default_shell": "/bin/bash",
        "fallback_homedir": "/home/%u",
        "ldap_id_mapping": "True",
        "ldap_referrals": "False",
        "use_fully_qualified_names": "False",
    }
    if tls_ca_cert:
        props["ldap_tls_cacert"] = tls_ca_cert
    if access_filter:
        props["access_provider"] = "ldap"
        props["ldap_access_filter"] = access_filter
    props.update(additional or {})
    return props


def render_pcluster_sssd_conf(domain_properties: dict[str, str], template: str = PCLUSTER_SSSD_ERB) -> str:
    """The cookbook's sssd.conf.erb rendered as Chef renders it: the properties sorted by name, one `k = v` line
    each, in place of the loop; comment and statement-only lines dropped. Only this template's tags are known."""
    out: list[str] = []
    lines = iter(template.splitlines())
    for line in lines:
        s = line.strip()
        if s.startswith("<%#") and s.endswith("%>"):
            continue
        if s.startswith("<% @domain_properties") and s.endswith("do |param, value| %>"):
            body = next(lines).strip()
            end = next(lines).strip()
            if body != '<%= "#{param} = #{value}" %>' or end != "<% end %>":
                raise ValueError(f"unknown loop body in the sssd.conf template: {body!r} / {end!r}")
            out += [f"{k} = {v}" for k, v in sorted(domain_properties.items())]
            continue
        if "<%" in line:
            raise ValueError(f"unknown ERB tag in the sssd.conf template: {line!r}")
        out.append(line)
    return "\n".join(out) + "\n"


# --- ratios and verdicts ---------------------------------------------------------------------------------------

# product / yardstick, at most
GOALS = {"join": 1.20, "id": 1.00, "login": 1.00}


def judge(product: float, yardstick: float, goal: float | None) -> tuple[float, str]:
    """(product / yardstick, 'yes' | 'no' | 'n/a' | 'no goal'): n/a when a side has no figure (NaN) or the
    yardstick is 0."""
    if any(math.isnan(x) for x in (product, yardstick)) or yardstick <= 0:
        return float("nan"), "n/a"
    ratio = product / yardstick
    if goal is None:
        return ratio, "no goal"
    return ratio, "yes" if ratio <= goal else "no"


def yardstick_row(measure: str, product: float, yardstick: float, goal: float | None, yard_name: str) -> tuple:
    """One row of the yardstick table: measure | product | yardstick | product / yardstick | goal | goal met?
    (figures in seconds in, milliseconds out)."""
    ratio, met = judge(product, yardstick, goal)

    def ms(x: float) -> str:
        return "-" if math.isnan(x) else f"{x * 1000:.0f} ms"

    return (measure, ms(product), ms(yardstick), "-" if math.isnan(ratio) else f"{ratio:.2f}x",
            "-" if goal is None else f"product <= {goal:.2f}x {yard_name}", met)


def same_id(peer: str, product: str) -> str:
    """Compare two `id` outputs as sets of ids and names, case aside: the ldap provider keeps AD's case ("Domain
    Users"), the ad provider lowercases (case_sensitive = False), and the group order is the cache's."""
    def norm(out: str) -> set[str]:
        return set(re.findall(r"\d+\([^)]*\)", out.lower()))

    if not peer or not product:
        return "`id` output missing"
    same = norm(peer) == norm(product)
    return "same ids and groups as the product" if same else "ids or groups DIFFER from the product"


YARD_HEADER = ("measure", "product", "yardstick", "product / yardstick", "goal", "goal met?")


def markdown_table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


# --- on a lab node ----------------------------------------------------------------------------------------------

FLOOR_SCRIPT = """set -e
# The floor: realm join (password on stdin, the join account's), then start sssd (realmd only enables it here:
# the lab's hosts have no systemd, and on a real node the start is part of what a join costs).
S=$(date +%s%N)
realm join --install=/ --client-software=sssd --membership-software=adcli -U "$1" "$2" >/tmp/floor-join.out 2>&1
J=$(date +%s%N)
systemctl restart sssd
E=$(date +%s%N)
echo "$((J - S)) $((E - J))"
"""


def floor_join_argv(join_user: str, domain: str) -> list[str]:
    """The floor's command on the node: names in argv, the password only on stdin."""
    return ["/bin/bash", "-c", FLOOR_SCRIPT, "_", join_user, domain]


def floor_steps(stdout: str) -> tuple[float, float]:
    """(realm join s, sssd start s) from the floor script's last output line (nanoseconds, timed in the node)."""
    try:
        join_ns, start_ns = stdout.strip().splitlines()[-1].split()
        return int(join_ns) / 1e9, int(start_ns) / 1e9
    except (IndexError, ValueError):
        raise ValueError(f"the floor script printed no step times: {stdout[-200:]!r}") from None


def floor_user(user: str, domain: str) -> str:
    """realmd's sssd.conf says use_fully_qualified_names = True: the floor's first lookup is user@domain."""
    return f"{user}@{domain}"


PEER_PAM = "DEBIAN_FRONTEND=noninteractive pam-auth-update --enable mkhomedir"  # the cookbook's Debian/Ubuntu step
