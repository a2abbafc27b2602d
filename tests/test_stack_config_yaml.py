"""Stack files as the Pulumi engine reads them (issue 19, item 3): the offline plan and `pulumi up` see the same
values in every file.

The expected values are read off the Go source the engine runs, not off a YAML spec (cited below as file:line):
- pulumi/pulumi at 1b5949891b (sdk 3.260): sdk/go.mod pins gopkg.in/yaml.v3 v3.0.1; encoding/marshal.go:27,111 reads
  stack files with it; workspace/loaders.go:173-230 loads a stack file in two passes (into `any`, then namespaced by
  loaders.go:61-89, re-encoded at :219 and decoded at :222 into config.Map); resource/config/value.go:238-245 and
  object.go:455-528 turn each value into an `object`; object.go:403-420 (MarshalString) makes it the string the
  program gets: bool/number as JSON, string as is, map/list as JSON (plaintext.go:256-268 after decryption);
  deploy/source_eval.go:219 hands that map to the language host, which puts it in PULUMI_CONFIG
  (sdk/python/cmd/pulumi-language-python/main.go:1071); pulumi.Config.get_object json-parses it
  (sdk/python/lib/pulumi/config.py:314-326).
- go-yaml/yaml at v3.0.1 (f6f7691b1f): resolve.go:35-68 (the first character's class; the only booleans, nulls,
  .inf/.nan), resolve.go:126-265 (resolve: timestamp first, then strconv.ParseInt(s without '_', 0, 64),
  ParseUint, then a float when yamlStyleFloat (resolve.go:124) matches; "Base 60 floats ... are purposefully
  unsupported", resolve.go:165-167), resolve.go:294-326 (timestamps), decode.go:618-619 (into `any` the resolved
  value as is: a timestamp is a time.Time), decode.go:406-409 (a null never reaches an Unmarshaler: config.Value
  stays "", decode.go:848 keeps the key), decode.go:769-781 (a key twice in one mapping is an error),
  encode.go:130-131 and 385-407 (between the passes times are written RFC 3339, floats with FormatFloat 'g').
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pcluster_ad.stack_config import ConfigError, load_settings, program_values, settings_from_values
from pcluster_ad.tools.mocks import PlanMocks, config_from_stack_file, run_program
from pcluster_ad.tools.stack_file import StackFileError, dump, load, read
from tests.conftest import ROOT, stack_doc

GO_TIME = "2024-01-01 00:00:00 +0000 UTC"  # time.Time.String() of 2024-01-01 (object.go:490-491)

# (YAML plain scalar, what PyYAML's YAML 1.1 makes of it, the string a top-level plain key hands the program,
#  the value the program reads from inside a structured key (get_object's JSON)), each from the Go source above.
ENGINE_READS = [
    # resolve.go:42-44,52-53: only true/True/TRUE and false/False/FALSE are booleans; y/Y/n/N/o/O only open them
    ("yes", True, "yes", "yes"),
    ("no", False, "no", "no"),
    ("on", True, "on", "on"),
    ("off", False, "off", "off"),
    ("Yes", True, "Yes", "Yes"),
    ("OFF", False, "OFF", "OFF"),
    ("y", "y", "y", "y"),
    ("True", True, "true", True),  # object.go:405-407: a bool reaches a top-level key as JSON text
    # resolve.go:191-199: ParseInt(s, 0, 64) reads 0777 as octal (the comment at resolve.go:233-236 says so) and
    # takes Go's 0o prefix too; PyYAML reads 0o777 as a string
    ("0777", 511, "511", 511),
    ("0o777", "0o777", "511", 511),
    ("0x1F", 31, "31", 31),
    ("1_000", 1000, "1000", 1000),  # resolve.go:191: every '_' removed first
    # resolve.go:165-167: no sexagesimal (PyYAML: 1*60+30)
    ("1:30", 90, "1:30", "1:30"),
    ("190:20:30", 685230, "190:20:30", "190:20:30"),
    # resolve.go:54 nulls; top level: decode.go:406-409 + 848 give config.Value's zero value "", nested: JSON null
    ("~", None, "", None),
    ("null", None, "", None),
    # resolve.go:204-208: ParseInt fails, yamlStyleFloat matches: the floats 8.0 and 1000.0, written 'g' between the
    # passes (encode.go:391-407) as "8" and "1000" and read back as integers (resolve.go:192-199)
    ("08", "08", "8", 8),
    ("1e3", "1e3", "1000", 1000),
    ("1.0", 1.0, "1", 1),
    ("1.5", 1.5, "1.5", 1.5),
    # resolve.go:184-189 + 294-326: a timestamp; decode.go:618-619 keeps the time.Time, object.go:490-491 makes it
    # time.Time.String()
    ("2024-01-01", "date", GO_TIME, GO_TIME),
]


def top_level(scalar: str) -> str:
    return read(f"config:\n  aws:profile: {scalar}\n").config["aws:profile"]


def nested(scalar: str):
    got = read(f"config:\n  pcluster-ad:tags:\n    k: {scalar}\n").config
    return program_values(got)["pcluster-ad:tags"]["k"]


@pytest.mark.parametrize("scalar, yaml11, top, inner", ENGINE_READS, ids=[c[0] for c in ENGINE_READS])
def test_the_plan_reads_each_yaml_1_1_difference_as_the_engine_does(scalar, yaml11, top, inner):
    """A top-level plain key reaches the program as `top`, a key inside an object as `inner` (Go source above); PyYAML
    (what the plan used) reads `yaml11`, which is where they differed."""
    assert top_level(scalar) == top
    assert nested(scalar) == inner
    got11 = yaml.safe_load(f"k: {scalar}")["k"]
    assert (type(got11).__name__ if yaml11 == "date" else got11) == yaml11


def test_quoting_and_tags_keep_a_string_as_written():
    """decode.go:224-247 + yaml.go:463-467: a quoted (or block) scalar and a !!str one are strings; resolve.go:150
    refuses a tag the text does not fit; a local tag (!Ref) is not resolvable (resolve.go:116-130): its text."""
    for scalar in ('"yes"', "'0777'", '"1:30"', "!!str 0o17", "!Ref 0777"):
        assert top_level(scalar) == yaml.safe_load(f"k: {scalar.replace('!Ref ', '!!str ')}")["k"]
    assert top_level("!!float 1") == "1"  # resolve.go:136-147: an int tagged !!float is a float
    with pytest.raises(StackFileError, match=r"line 2: cannot decode !!str `yes` as a !!bool"):
        top_level("!!bool yes")


@pytest.mark.parametrize("scalar", [".inf", "-.inf", ".nan"])
def test_infinity_and_nan_are_refused_as_the_engine_fails_on_them(scalar):
    """object.go:403-407 json.Marshal's them: "json: unsupported value", and the stack does not load."""
    with pytest.raises(StackFileError, match=r"pcluster-ad:cluster.queues\[0\].maxCount: .* cannot be passed"):
        read(f"config:\n  pcluster-ad:cluster:\n    queues:\n      - maxCount: {scalar}\n")


def test_a_key_written_twice_is_refused_as_the_engine_refuses_it():
    """decode.go:769-781: `mapping key "natGateways" already defined at line 4`, the whole file refused; PyYAML kept
    the last value."""
    text = "config:\n  pcluster-ad:network:\n    natGateways: 1\n    natGateways: 2\n"
    assert yaml.safe_load(text)["config"]["pcluster-ad:network"] == {"natGateways": 2}
    with pytest.raises(StackFileError, match=r'line 4: mapping key "natGateways" already defined at line 3'):
        read(text)


def test_keys_without_a_namespace_belong_to_the_project():
    """loaders.go:61-89: `network:` is read as pcluster-ad:network; both spellings at once would leave one to Go's
    map order, so that is refused."""
    got = read("config:\n  network:\n    cidr: 10.1.0.0/16\n").config
    assert got == {"pcluster-ad:network": '{"cidr":"10.1.0.0/16"}'}
    with pytest.raises(StackFileError, match="same key"):
        read("config:\n  network: {}\n  pcluster-ad:network: {}\n")


def test_secrets_top_level_and_nested_stay_secret():
    """object.go:541-550: a map holding only `secure: <string>` is ciphertext; the key is secret (map.go SecureKeys)."""
    got = read("config:\n  pcluster-ad:adminPassword:\n    secure: v1:abc\n  pcluster-ad:join:\n    user: x\n"
               "    other: {secure: v1:def}\n")
    assert got.secret_keys == ["pcluster-ad:adminPassword", "pcluster-ad:join"]
    assert "v1:" not in json.dumps(got.config)


def test_non_string_keys_inside_objects_become_their_go_text():
    """object.go:505-508: fmt.Sprintf("%v", key) (nil prints <nil>; 1e6 is the float 1e+06)."""
    got = program_values(read("config:\n  pcluster-ad:tags: {1: a, true: b, ~: c, 1e6: d}\n").config)
    assert got["pcluster-ad:tags"] == {"1": "a", "true": "b", "<nil>": "c", "1e+06": "d"}


def test_merge_keys_and_anchors():
    """decode.go:959-996: explicit keys win over merged ones, the first merged map over later ones."""
    text = ("base: &b {instanceType: c5.large, minCount: 0}\nother: &o {minCount: 5, maxCount: 3}\n"
            "config:\n  pcluster-ad:cluster:\n    queues:\n      - <<: [*b, *o]\n        minCount: 1\n")
    queue = program_values(read(text).config)["pcluster-ad:cluster"]["queues"][0]
    assert queue == {"instanceType": "c5.large", "minCount": 1, "maxCount": 3}


def test_the_program_reads_what_the_plan_validated():
    """The plan's validation (settings_from_values over the engine's strings) and the program's own reading under
    pulumi (load_settings over the same strings) agree, problem for problem, on files where YAML 1.1 differed."""
    text = (ROOT / "Pulumi.dev.yaml").read_text() + (
        "  pcluster-ad:access: ~\n"  # "" to the program: not set
        "  pcluster-ad:tags: {window: 1:30, created: 2024-01-01}\n")
    bad = text.replace("sshPasswordAuth: true", "sshPasswordAuth: yes").replace("maxCount: 10", "maxCount: 0o10")
    for doc in (text, bad):
        engine = read(doc)
        try:
            plan = settings_from_values(program_values(engine.config), stack="dev", secret_keys=engine.secret_keys)
        except ConfigError as e:
            plan = sorted(map(str, e.problems))
        program = []

        def run(engine=engine, program=program):
            try:
                program.append(load_settings())
            except ConfigError as e:
                program.append(sorted(map(str, e.problems)))

        run_program(run, config=engine.config, secret_keys=engine.secret_keys, stack="dev",
                    mocks=PlanMocks(region="eu-west-1"))
        assert program == [plan]
    assert plan == ["pcluster-ad:cluster.sshPasswordAuth: must be true or false, got 'yes' (YAML 1.1's yes/no/on/off"
                    " are plain strings to Pulumi, which reads YAML 1.2: write true or false)"]


def run_plan(tmp_path, text: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "Pulumi.mine.yaml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "pcluster_ad.tools.plan", "--config-file", str(cfg), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)


def dev_text() -> str:
    return (ROOT / "Pulumi.dev.yaml").read_text()


def test_plan_refuses_yes_for_a_boolean_as_pulumi_up_does(tmp_path):
    result = run_plan(tmp_path, dev_text().replace("sshPasswordAuth: true", "sshPasswordAuth: yes"))
    assert result.returncode == 1
    assert "pcluster-ad:cluster.sshPasswordAuth: must be true or false, got 'yes'" in result.stderr


def test_plan_accepts_what_the_engine_reads_as_numbers_and_strings(tmp_path):
    """maxCount: 0o10 is 8 to the engine (PyYAML: the string '0o10', refused); minCount: 1.0 is 1; a tag 1:30 is the
    string "1:30" (PyYAML: 90, refused); a date tag is time.Time.String(), with a warning to quote it."""
    text = dev_text().replace("maxCount: 10", "maxCount: 0o10").replace("minCount: 2", "minCount: 1.0") + (
        "  pcluster-ad:tags:\n    window: 1:30\n    created: 2024-01-01\n")
    result = run_plan(tmp_path, text)
    assert result.returncode == 0, result.stderr
    cluster = yaml.safe_load((tmp_path / "out" / "cluster-config.yaml").read_text())
    resource = cluster["Scheduling"]["SlurmQueues"][0]["ComputeResources"][0]
    assert (resource["MinCount"], resource["MaxCount"]) == (1, 8)
    tags = {t["Key"]: t["Value"] for t in cluster["Tags"]}
    assert tags["window"] == "1:30" and tags["created"] == GO_TIME
    assert f"'{GO_TIME}' is how Pulumi passes an unquoted YAML date" in result.stderr


def test_plan_reads_an_empty_object_key_as_not_set_with_the_engines_warning(tmp_path):
    """`pcluster-ad:access: ~` is "" to the program (decode.go:406-409); loaders.go:379-405 warns about it."""
    result = run_plan(tmp_path, dev_text() + "  pcluster-ad:access: ~\n")
    assert result.returncode == 0, result.stderr
    assert 'No value for configuration key "pcluster-ad:access"' in result.stderr


def test_plan_refuses_a_key_written_twice(tmp_path):
    result = run_plan(tmp_path, dev_text().replace("    natGateways: 1\n", "    natGateways: 1\n    natGateways: 2\n"))
    assert result.returncode == 1
    assert 'mapping key "natGateways" already defined at line' in result.stderr
    assert not (tmp_path / "out").exists()


def test_plan_reads_a_key_without_namespace_as_the_projects(tmp_path):
    result = run_plan(tmp_path, dev_text().replace("  pcluster-ad:network:", "  network:"))
    assert result.returncode == 0, result.stderr


def test_fixtures_read_stack_files_as_the_engine_does():
    """tests/conftest.py's run_stack goes through the same reading as the plan."""
    config, _ = config_from_stack_file(load(dev_text()))
    assert config == read(dev_text()).config
    assert config == config_from_stack_file(stack_doc("dev"))[0]


@pytest.mark.parametrize("text", ["0o17", "08", "1e3", "1_000", "0x1F", ".5", "+1", "yes", "True", "null", "~", "",
                                  "1:30", "2024-01-01", "0777", "-0b1"])
def test_dump_writes_strings_the_engine_reads_back_as_the_same_strings(text):
    """automation.write_config's writer: a string stays a string (PyYAML's safe_dump leaves 0o17, 08, 1e3 plain,
    which the engine reads as numbers)."""
    assert load(dump({"k": text, text: "v"})) == {"k": text, text: "v"}
    if text in ("0o17", "08", "1e3"):
        assert load(yaml.safe_dump({"k": text}))["k"] != text
