"""computer_account.py's pure parts: the node object's security descriptor, the one-time password, the name check
before anything and a Directory that never shows its password. (Creating the object over sealed LDAP is proven
against a real Samba DC in the AD lab, tests/adlab.)"""

from __future__ import annotations

import asyncio
import re
import string
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from winacl.dtyp.ace import well_known_accessmasks
from winacl.dtyp.security_descriptor import SECURITY_DESCRIPTOR

from pcluster_ad.lambda_src import computer_account as ca

# Samba 4.17's defaultSecurityDescriptor of the computer class (what _schema reads from CN=Computer,<schema>).
SAMBA_COMPUTER_DEFAULT = (
    "D:(A;;RPWPCRCCDCLCLORCWOWDSDDTSW;;;DA)(A;;RPWPCRCCDCLCLORCWOWDSDDTSW;;;AO)(A;;RPWPCRCCDCLCLORCWOWDSDDTSW;;;SY)"
    "(A;;RPCRLCLORCSDDT;;;CO)(OA;;WP;4c164200-20c0-11d0-a768-00aa006e0529;;CO)(A;;RPLCLORC;;;AU)"
    "(OA;;CR;ab721a53-1e2f-11d0-9819-00aa0040529b;;WD)(A;;CCDC;;;PS)(OA;;CCDC;bf967aa8-0de6-11d0-a285-00aa003049e2;;PO)"
    "(OA;;RPWP;bf967a7f-0de6-11d0-a285-00aa003049e2;;CA)(OA;;SW;f3a64788-5306-11d1-a9c5-0000f80367c1;;PS)"
    "(OA;;RPWP;77B5B886-944A-11d1-AEBD-0000F80367C1;;PS)(OA;;SW;72e39547-7b18-11d1-adef-00c04fd8d5cd;;PS)"
    "(OA;;SW;72e39547-7b18-11d1-adef-00c04fd8d5cd;;CO)(OA;;SW;f3a64788-5306-11d1-a9c5-0000f80367c1;;CO)"
    "(OA;;WP;3e0abfd0-126a-11d0-a060-00aa006c33ed;bf967a86-0de6-11d0-a285-00aa003049e2;CO)"
    "(OA;;WP;5f202010-79a5-11d0-9020-00c04fc2d4cf;bf967a86-0de6-11d0-a285-00aa003049e2;CO)"
    "(OA;;WP;bf967950-0de6-11d0-a285-00aa003049e2;bf967a86-0de6-11d0-a285-00aa003049e2;CO)"
    "(OA;;WP;bf967953-0de6-11d0-a285-00aa003049e2;bf967a86-0de6-11d0-a285-00aa003049e2;CO)"
    "(OA;;RP;46a9b11d-60ae-405a-b7e8-ff8a58d456d2;;S-1-5-32-560)"
)
DOMAIN_SID = "S-1-5-21-3604662616-2051390272-1159330826"
ACE = re.compile(r"\(([^()]*)\)")
# MS-DTYP 2.4.3 / MS-ADTS 5.1.3.2: the rights the default uses, by hand (winacl's table is checked against these).
FULL = 0xF01FF  # RP WP CR CC DC LC LO RC WO WD SD DT SW
# The default without its creator-owner entries, rights as masks: what the object gets, in order.
KEPT = [
    f"(A;;{FULL:#x};;;DA)",
    f"(A;;{FULL:#x};;;S-1-5-32-548)",  # AO, as a full SID (BUILTIN aliases: see TRUSTEES)
    f"(A;;{FULL:#x};;;SY)",
    "(A;;0x20094;;;AU)",  # RP LC LO RC
    "(OA;;0x100;ab721a53-1e2f-11d0-9819-00aa0040529b;;WD)",  # CR
    "(A;;0x3;;;PS)",  # CC DC
    "(OA;;0x3;bf967aa8-0de6-11d0-a285-00aa003049e2;;S-1-5-32-550)",  # PO
    "(OA;;0x30;bf967a7f-0de6-11d0-a285-00aa003049e2;;CA)",  # RP WP
    "(OA;;0x8;f3a64788-5306-11d1-a9c5-0000f80367c1;;PS)",  # SW
    "(OA;;0x30;77B5B886-944A-11d1-AEBD-0000F80367C1;;PS)",
    "(OA;;0x8;72e39547-7b18-11d1-adef-00c04fd8d5cd;;PS)",
    "(OA;;0x10;46a9b11d-60ae-405a-b7e8-ff8a58d456d2;;S-1-5-32-560)",  # RP
]
# Each trustee of the default and the SID it stands for (MS-DTYP 2.4.2.4; S-1-3-0 is CREATOR OWNER).
TRUSTEES = {
    "DA": f"{DOMAIN_SID}-512",
    "AO": "S-1-5-32-548",  # BUILTIN\Account Operators: an alias of the BUILTIN domain, not of this one
    "SY": "S-1-5-18",
    "AU": "S-1-5-11",
    "WD": "S-1-1-0",
    "PS": "S-1-5-10",
    "PO": "S-1-5-32-550",  # BUILTIN\Print Operators
    "CA": f"{DOMAIN_SID}-517",
    "S-1-5-32-560": "S-1-5-32-560",
    "OW": "S-1-3-4",
}


def aces(sddl: str) -> list[str]:
    return ["(" + a + ")" for a in ACE.findall(sddl)]


def dacl_part(sddl: str) -> str:
    return sddl[sddl.index("D:") + 2:]


def mask_of(rights: str) -> int:
    return sum(well_known_accessmasks[rights[i:i + 2]] for i in range(0, len(rights), 2))


# --- the security descriptor ----------------------------------------------------------------


def test_winacls_rights_are_the_ones_of_ms_dtyp() -> None:
    # The conversion trusts winacl's table: it must say what MS-DTYP says.
    assert mask_of("RPWPCRCCDCLCLORCWOWDSDDTSW") == FULL
    assert {k: well_known_accessmasks[k] for k in ("RP", "WP", "CR", "CC", "DC", "LC", "LO", "RC", "SW", "DT")} == {
        "RP": 0x10, "WP": 0x20, "CR": 0x100, "CC": 0x1, "DC": 0x2, "LC": 0x4, "LO": 0x80, "RC": 0x20000, "SW": 0x8,
        "DT": 0x40}
    assert (well_known_accessmasks["WO"], well_known_accessmasks["WD"], well_known_accessmasks["SD"]) == (
        0x80000, 0x40000, 0x10000)


def test_owner_domain_admins_form_is_the_default_without_creator_owner() -> None:
    sddl = ca.descriptor_sddl(SAMBA_COMPUTER_DEFAULT, owner_domain_admins=True)
    assert sddl == "O:DAG:DAD:" + "".join(KEPT)


def test_no_creator_owner_entry_remains_in_either_form() -> None:
    default_aces = aces(SAMBA_COMPUTER_DEFAULT)
    assert sum(a.endswith(";CO)") for a in default_aces) == 8  # what the creator would have kept
    for owner_domain_admins in (True, False):
        sddl = ca.descriptor_sddl(SAMBA_COMPUTER_DEFAULT, owner_domain_admins=owner_domain_admins)
        assert not [a for a in aces(sddl) if a.split(";")[-1].upper() == "CO)"]
        assert len(aces(sddl)) == len(default_aces) - 8 + (not owner_domain_admins)


def test_every_right_is_a_hex_mask_equal_to_winacls_sum() -> None:
    kept = [a for a in aces(SAMBA_COMPUTER_DEFAULT) if not a.endswith(";CO)")]
    for owner_domain_admins in (True, False):
        converted = aces(ca.descriptor_sddl(SAMBA_COMPUTER_DEFAULT, owner_domain_admins=owner_domain_admins))
        for original, ace in zip(kept, converted[: len(kept)], strict=True):
            before, after = original[1:-1].split(";"), ace[1:-1].split(";")
            assert re.fullmatch(r"0x[0-9a-f]+", after[2]), ace
            assert int(after[2], 16) == mask_of(before[2]), (original, ace)
            # Only the rights change, and a BUILTIN alias becomes its full SID.
            assert after[:2] + after[3:5] == before[:2] + before[3:5]
            assert after[5] == ca.BUILTIN_ALIASES.get(before[5], before[5])


def test_fallback_form_has_no_owner_and_an_owner_rights_read_only_entry() -> None:
    sddl = ca.descriptor_sddl(SAMBA_COMPUTER_DEFAULT, owner_domain_admins=False)
    assert sddl == "G:DAD:" + "".join(KEPT) + ca.OWNER_RIGHTS_READ_ONLY
    assert "O:" not in sddl
    kind, flags, mask, obj, inherited, trustee = ca.OWNER_RIGHTS_READ_ONLY[1:-1].split(";")
    assert (kind, flags, obj, inherited) == ("A", "", "", "")
    assert int(mask, 16) == well_known_accessmasks["RC"]  # READ_CONTROL only: no implicit WRITE_DAC for the owner
    assert TRUSTEES.get(trustee, trustee) == "S-1-3-4"  # OWNER RIGHTS


def parse(sddl: str) -> SECURITY_DESCRIPTOR:
    return SECURITY_DESCRIPTOR.from_sddl(sddl, domain_sid=DOMAIN_SID)


@pytest.mark.parametrize("owner_domain_admins", [True, False])
def test_winacl_parses_the_descriptor_and_its_bytes_round_trip(owner_domain_admins: bool) -> None:
    sddl = ca.descriptor_sddl(SAMBA_COMPUTER_DEFAULT, owner_domain_admins=owner_domain_admins)
    sd = parse(sddl)
    data = sd.to_bytes()
    again = SECURITY_DESCRIPTOR.from_bytes(data)
    assert again.to_bytes() == data
    masks = [ace.Mask for ace in again.Dacl.aces]
    assert masks == [int(a[1:-1].split(";")[2], 16) for a in aces(sddl)]
    assert "S-1-3-0" not in again.to_sddl()  # CREATOR OWNER
    if owner_domain_admins:
        assert str(again.Owner) == str(again.Group) == f"{DOMAIN_SID}-512"
    else:
        assert again.Owner is None and str(again.Group) == f"{DOMAIN_SID}-512"
        assert (str(again.Dacl.aces[-1].Sid), again.Dacl.aces[-1].Mask) == ("S-1-3-4", 0x20000)


def test_every_trustee_becomes_its_well_known_sid() -> None:
    sd = parse(ca.descriptor_sddl(SAMBA_COMPUTER_DEFAULT, owner_domain_admins=True))
    trustees = [a[1:-1].split(";")[-1] for a in KEPT]
    assert [str(ace.Sid) for ace in sd.Dacl.aces] == [TRUSTEES.get(t, t) for t in trustees]


def test_dacl_flags_and_hex_rights_are_kept() -> None:
    sddl = ca.descriptor_sddl("D:PAI(A;;0x20094;;;AU)(A;;RP;;;co)(A;CI;RPWP;;;PS)", owner_domain_admins=True)
    assert sddl == "O:DAG:DAD:PAI(A;;0x20094;;;AU)(A;CI;0x30;;;PS)"
    # An owner and group in the class default are replaced, not kept twice.
    assert ca.descriptor_sddl("O:SYG:SYD:(A;;RP;;;AU)", owner_domain_admins=True) == "O:DAG:DAD:(A;;0x10;;;AU)"


def test_a_sacl_in_the_default_does_not_end_up_in_the_dacl() -> None:
    sddl = ca.descriptor_sddl("D:(A;;RP;;;AU)S:(AU;SA;WP;;;WD)", owner_domain_admins=True)
    assert "(AU;" not in dacl_part(sddl).split("S:")[0]


@pytest.mark.parametrize("rights", ["RPXX", "RPW", "rp", "GZ"])
def test_an_unknown_right_is_refused(rights: str) -> None:
    with pytest.raises(ca.ComputerAccountError, match="unknown access right"):
        ca.descriptor_sddl(f"D:(A;;RP;;;DA)(A;;{rights};;;AU)", owner_domain_admins=True)


@pytest.mark.parametrize("ace", ["(A;;RP;;AU)", "(A;;RP;;;;AU)", "()", "(A)"])
def test_a_malformed_ace_is_refused(ace: str) -> None:
    with pytest.raises(ca.ComputerAccountError, match="unexpected ACE"):
        ca.descriptor_sddl(f"D:(A;;RP;;;DA){ace}", owner_domain_admins=False)


def test_unknown_rights_of_a_creator_owner_entry_do_not_matter() -> None:
    # Dropped before conversion: only what the object keeps must be understood.
    assert ca.descriptor_sddl("D:(A;;RP;;;DA)(A;;XX;;;CO)", owner_domain_admins=True) == "O:DAG:DAD:(A;;0x10;;;DA)"


# --- the one-time password ------------------------------------------------------------------


def test_one_time_password_has_every_class_and_only_letters_and_digits() -> None:
    passwords = {ca.one_time_password() for _ in range(200)}
    assert len(passwords) == 200
    for pw in passwords:
        assert len(pw) == ca.PASSWORD_LENGTH == 48
        assert re.fullmatch(r"[A-Za-z0-9]+", pw)
        assert re.search("[a-z]", pw) and re.search("[A-Z]", pw) and re.search("[0-9]", pw)


def scripted(*batches: str) -> tuple[Any, list[str]]:
    """A `choice` that hands out the characters of `batches` in order and records the alphabets it was given."""
    characters: Iterator[str] = iter("".join(batches))
    alphabets: list[str] = []

    def choice(alphabet: str) -> str:
        alphabets.append(alphabet)
        return next(characters)

    return choice, alphabets


@pytest.mark.parametrize("missing", ["lower", "upper", "digit"])
def test_a_draw_without_every_class_is_drawn_again(missing: str) -> None:
    without = {"lower": "ABCD1234", "upper": "abcd1234", "digit": "abcdEFGH"}[missing]
    choice, alphabets = scripted(without, "aB3dEf9h")
    assert ca.one_time_password(8, choice=choice) == "aB3dEf9h"
    assert len(alphabets) == 16
    assert set(alphabets) == {string.ascii_letters + string.digits}  # letters and digits only: no quoting anywhere


def test_one_time_password_length_is_the_argument() -> None:
    choice, _ = scripted("x" * 3 + "Y1" + "z" * 15)
    assert ca.one_time_password(20, choice=choice) == "xxxY1" + "z" * 15


# --- create_computer: the name first ---------------------------------------------------------


@pytest.fixture
def directory() -> ca.Directory:
    return ca.Directory(dc_ips=("10.0.0.10",), domain="test.domain", computer_ou="OU=Computers,DC=test,DC=domain",
                        user="svc-join", password="Pw-7f3c9e1a!Join-S3cret")


@pytest.fixture
def no_ldap(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """_create (the LDAP part) recorded instead of run."""
    calls: list[tuple[Any, ...]] = []

    async def create(directory: ca.Directory, name: str, host_fqdn: str, password: str) -> str:
        calls.append((directory, name, host_fqdn, password))
        return f"CN={name},{directory.computer_ou}"

    monkeypatch.setattr(ca, "_create", create)
    return calls


@pytest.mark.parametrize(
    "name", ["", "hpc57df73291f7c", "-HPC1", "HPC1-", "HPC57DF73291F7C0", "HPC_1", "HPC.1", "HPC1\n", "HPC 1", "ÄBC"]
)
def test_create_computer_refuses_a_bad_name_before_anything(directory, no_ldap, name: str) -> None:
    def password_factory() -> str:
        raise AssertionError("a password drawn for a refused name")

    with pytest.raises(ca.ComputerAccountError, match="not a computer name"):
        ca.create_computer(directory, name, "x.test.domain", password_factory=password_factory)
    assert no_ldap == []


@pytest.mark.parametrize("name", ["H", "HPC57DF73291F7C", "HPC-1", "1HPC"])
def test_create_computer_passes_a_good_name_and_a_fresh_password_on(directory, no_ldap, name: str) -> None:
    dn, password = ca.create_computer(directory, name, f"{name.lower()}.test.domain",
                                      password_factory=lambda: "Fresh1Password")
    assert (dn, password) == (f"CN={name},OU=Computers,DC=test,DC=domain", "Fresh1Password")
    assert no_ldap == [(directory, name, f"{name.lower()}.test.domain", "Fresh1Password")]


def test_create_computer_draws_its_password_with_one_time_password(directory, no_ldap) -> None:
    # The default factory is bound at definition: check it is the module's generator.
    assert ca.create_computer.__defaults__ == (ca.one_time_password,)
    _, password = ca.create_computer(directory, "HPC1", "hpc1.test.domain")
    assert len(password) == ca.PASSWORD_LENGTH and no_ldap[0][3] == password


# --- Directory -------------------------------------------------------------------------------


def test_directory_repr_has_no_password(directory: ca.Directory) -> None:
    for shown in (repr(directory), str(directory), f"{directory}", repr([directory]), repr({"d": directory})):
        assert directory.password not in shown
        assert "password" not in shown.lower()
    assert "10.0.0.10" in repr(directory) and "OU=Computers,DC=test,DC=domain" in repr(directory)


def test_exceptions_are_one_family() -> None:
    # The join function maps the subclasses first (403, 503) and the base last (500).
    assert issubclass(ca.AlreadyExists, ca.ComputerAccountError)
    assert issubclass(ca.DirectoryUnavailable, ca.ComputerAccountError)
    assert not issubclass(ca.AlreadyExists, ca.DirectoryUnavailable)


@pytest.mark.parametrize("name", ["msldap", "asyauth", "asysocks", "minikerberos"])
def test_ldap_library_loggers_are_held_above_debug(name: str) -> None:
    # msldap logs whole requests at DEBUG, the add's unicodePwd included; a DEBUG root logger must not turn it on.
    import logging

    assert logging.getLogger(name).level >= logging.INFO
    assert logging.getLogger(f"{name}.connection").getEffectiveLevel() >= logging.INFO


def test_create_computer_leaves_the_threads_event_loop_alone(monkeypatch) -> None:
    """asyncio.run would leave the thread without a current event loop: Pulumi's engine (and anything else
    calling asyncio.get_event_loop() in the same thread later) then fails. Seen in the full suite."""
    async def fake_create(directory, name, host_fqdn, password):
        return f"CN={name},{directory.computer_ou}"

    monkeypatch.setattr(ca, "_create", fake_create)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.11 warns when get_event_loop() makes the loop
        before = asyncio.get_event_loop()
    d = ca.Directory(["10.0.0.2"], "test.domain", "OU=Computers,DC=test,DC=domain", "svc", "pw")
    assert ca.create_computer(d, "NODE1", "node1.test.domain", lambda: "Pw1") == (
        "CN=NODE1,OU=Computers,DC=test,DC=domain", "Pw1")
    assert asyncio.get_event_loop() is before and not before.is_closed()
