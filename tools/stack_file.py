"""Pulumi.<stack>.yaml read exactly as the Pulumi engine reads it, and written so that it reads back what was meant.

The engine (pulumi/pulumi 1b5949891b, sdk 3.260) reads a stack file with
gopkg.in/yaml.v3 v3.0.1 (sdk/go.mod; sdk/go/common/encoding/marshal.go:27,111), in two passes
(sdk/go/common/workspace/loaders.go:173-230): the file into Go's `any`, keys without a namespace prefixed with the
project's name (loaders.go:61-89), re-encoded (util/yamlutil/encode.go) and decoded again into config.Map, each value
an `object` (resource/config/object.go:455-528) that becomes the string the program gets (object.go:403-420:
booleans and numbers as JSON, strings as they are, maps and lists as JSON; map.go:31-70 and plaintext.go:256-268 when
decrypted). The engine hands the program that map of strings (pkg/resource/deploy/source_eval.go:219; the Python
language host puts it in PULUMI_CONFIG, sdk/python/cmd/pulumi-language-python/main.go:1071), and
pulumi.Config.get_object JSON-parses one (sdk/python/lib/pulumi/config.py:314-326).

yaml.v3 is not YAML 1.1 (PyYAML) and not the YAML 1.2 core schema either (resolve.go:126-265 at go-yaml v3.0.1):
- booleans are only true/True/TRUE/false/False/FALSE: yes, no, on, off, y, n are strings;
- integers go through Go's strconv.ParseInt(s, 0, 64) after removing every '_': 0x1F, 0b101, 0o17 and the 1.1
  octal 0777 (= 511) are integers, and so are 1_000; then ParseUint; then a float if `yamlStyleFloat` matches, so
  08 and 1e3 are the floats 8 and 1000 (PyYAML: strings); there is no sexagesimal: 1:30 is a string (PyYAML: 90);
- null is '', ~, null, Null, NULL; a top-level null reaches the program as "" (decode.go:406-409 skips
  config.Value's unmarshaler, decode.go:848 keeps the key), a nested one as JSON null;
- a timestamp (2024-01-01, 2001-12-14T21:59:43.10-05:00, resolve.go:294-326) becomes Go's time.Time and reaches the
  program as time.Time.String(), "2024-01-01 00:00:00 +0000 UTC" (object.go:490);
- floats are re-encoded with strconv.FormatFloat(f, 'g', -1) between the passes (encode.go floatv) and read again,
  so 1.0 comes back as the integer 1; .inf and .nan make the stack file fail to load (json.Marshal refuses them);
- a key written twice in one mapping fails the load (decode.go:769-781, by the key's text), PyYAML keeps the last;
- non-string keys inside objects become their fmt "%v" text (object.go:505-508).

The scanner/parser is libyaml's (PyYAML's C binding when present: go-yaml v3 is a Go port of libyaml), the rules
above are re-implemented here, and tests/test_stack_file.py holds them to the cited Go source.
"""

from __future__ import annotations

import base64
import calendar
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml
from yaml.resolver import BaseResolver

try:  # libyaml, of which go-yaml v3 is a port; PyYAML's own parser follows the same design
    from yaml.cyaml import CParser as _LibyamlParser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _LibyamlParser = None

PROJECT = "pcluster-ad"
# What an encrypted value ({secure: ...}) becomes offline: it cannot be decrypted, and still satisfies the password
# rules. The engine hands the program the plaintext.
ENCRYPTED_PLACEHOLDER = "Encrypted-Offline-1"

STR, BOOL, INT, FLOAT, NULL = "!!str", "!!bool", "!!int", "!!float", "!!null"
TIMESTAMP, BINARY, MERGE = "!!timestamp", "!!binary", "!!merge"
_RESOLVABLE = {"", STR, BOOL, INT, FLOAT, NULL, TIMESTAMP}  # resolve.go:116-122
_LONG_PREFIX = "tag:yaml.org,2002:"


class StackFileError(ValueError):
    """The engine would not load this stack file (the message says why, as the engine would)."""


# --------------------------------------------------------------------------- scalars (resolve.go)


@dataclass(frozen=True)
class GoTime:
    """A time.Time as yaml.v3 parses a timestamp: wall clock, its UTC offset and zone name ("" = unnamed)."""

    year: int
    month: int
    day: int
    hour: int = 0
    minute: int = 0
    second: int = 0
    nsec: int = 0
    offset: int = 0  # seconds east of UTC
    zone: str = "UTC"

    def __str__(self) -> str:
        """time.Time.String(): "2006-01-02 15:04:05.999999999 -0700 MST" (an unnamed zone prints as -0700)."""
        frac = f".{self.nsec:09d}".rstrip("0") if self.nsec else ""
        sign = "-" if self.offset < 0 else "+"
        minutes = abs(self.offset) // 60
        num = f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
        return (f"{self.year:04d}-{self.month:02d}-{self.day:02d} {self.hour:02d}:{self.minute:02d}:"
                f"{self.second:02d}{frac} {num} {self.zone or num}")


class NonStrKey(str):
    """A mapping key that was not a string in YAML (1, true, ~): its Go fmt "%v" text, as object.go:505-508 keys it."""


_RESOLVE_MAP: dict[str, tuple[str, Any]] = {}  # resolve.go:47-67
for _v, _t, _words in ((True, BOOL, ("true", "True", "TRUE")), (False, BOOL, ("false", "False", "FALSE")),
                       (None, NULL, ("", "~", "null", "Null", "NULL")),
                       (math.nan, FLOAT, (".nan", ".NaN", ".NAN")),
                       (math.inf, FLOAT, (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")),
                       (-math.inf, FLOAT, ("-.inf", "-.Inf", "-.INF"))):
    for _w in _words:
        _RESOLVE_MAP[_w] = (_t, _v)


def _hint(s: str) -> str:
    """resolve.go:35-45: the first character decides what a plain scalar may be."""
    if s == "":
        return "N"
    c = s[0]
    if c in "+-":
        return "S"
    if "0" <= c <= "9":
        return "D"
    if c in "yYnNtTfFoO~":
        return "M"
    return "." if c == "." else ""


# strconv.ParseInt(s, 0, 64) / ParseUint(s, 0, 64): sign (ParseInt only), then 0x/0b/0o or a leading 0 (octal).
_GO_INT = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO][0-7]+|0[0-7]*|[1-9][0-9]*)")
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")  # resolve.go:124
_GO_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?")  # what strconv.ParseFloat takes of a string opening '.'


def _go_parse_int(s: str) -> int | None:
    m = _GO_INT.fullmatch(s)
    if not m:
        return None
    digits = m[2]
    if len(digits) >= 3 and digits[1] in "xXbBoO":
        n = int(digits[2:], {"x": 16, "b": 2, "o": 8}[digits[1].lower()])
    else:
        n = int(digits, 8) if digits.startswith("0") else int(digits)
    if m[1] == "-":
        return -n if n <= 2**63 else None
    if n < 2**63 or (not m[1] and n < 2**64):  # ParseInt, else ParseUint (which takes no sign)
        return n
    return None


def _go_parse_float(s: str) -> float | None:
    f = float(s)
    return None if math.isinf(f) else f  # strconv.ParseFloat: out of range is an error


_DATE = r"(\d{4})-(\d{1,2})-(\d{1,2})"
_TIME = r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,](\d+))?"
_TIMESTAMP_FORMATS = (  # resolve.go:294-301, as Go's time.Parse reads those layouts
    re.compile(_DATE + r"T" + _TIME + r"(Z|[+-]\d\d:\d\d)"),
    re.compile(_DATE + r"t" + _TIME + r"(Z|[+-]\d\d:\d\d)"),
    re.compile(_DATE + r" +" + _TIME),
    re.compile(_DATE),
)


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _go_parse_timestamp(s: str) -> GoTime | None:
    """resolve.go:306-326 parseTimestamp."""
    if not re.match(r"\d{4}-", s):
        return None
    for fmt in _TIMESTAMP_FORMATS:
        m = fmt.fullmatch(s)
        if m:
            break
    else:
        return None
    g = m.groups()
    year, month, day = int(g[0]), int(g[1]), int(g[2])
    hour = minute = second = nsec = 0
    tz = None
    if len(g) > 3:
        hour, minute, second = int(g[3]), int(g[4]), int(g[5])
        nsec = int((g[6] or "0")[:9].ljust(9, "0"))
        tz = g[7] if len(g) > 7 else None
    if not (1 <= month <= 12 and 1 <= day <= _days_in(month, year) and hour < 24 and minute < 60 and second < 60):
        return None
    if tz is None or tz == "Z":  # no zone: UTC (time.Parse's default location)
        return GoTime(year, month, day, hour, minute, second, nsec)
    hh, mm = int(tz[1:3]), int(tz[4:6])
    if hh > 24 or mm > 60:
        return None
    offset = (hh * 60 + mm) * 60 * (-1 if tz[0] == "-" else 1)
    if offset == 0:  # written again as ...Z between the passes (RFC3339): UTC
        return GoTime(year, month, day, hour, minute, second, nsec)
    # time.Parse uses the Local zone when it has this offset at that instant, else an unnamed zone.
    zone = ""
    try:
        local = time.localtime(calendar.timegm((year, month, day, hour, minute, second)) - offset)
        if local.tm_gmtoff == offset:
            zone = local.tm_zone
    except (OverflowError, OSError, ValueError):
        pass
    return GoTime(year, month, day, hour, minute, second, nsec, offset, zone)


def resolve(tag: str, s: str) -> tuple[str, Any]:
    """gopkg.in/yaml.v3 resolve(tag, in) (resolve.go:126-265): the tag and Go value of a scalar; tag "" = plain."""
    if tag not in _RESOLVABLE:
        return tag, s
    rtag, out = _resolve(tag, s)
    if tag in ("", rtag, STR, BINARY):
        return rtag, out
    if tag == FLOAT and rtag == INT:
        return FLOAT, float(out)
    raise StackFileError(f"cannot decode {rtag} `{s}` as a {tag}")


def _resolve(tag: str, s: str) -> tuple[str, Any]:
    hint = _hint(s)
    if not hint or tag in (STR, BINARY):
        return STR, s
    if s in _RESOLVE_MAP:
        return _RESOLVE_MAP[s]
    if hint == ".":
        if _GO_DOT_FLOAT.fullmatch(s) and (f := _go_parse_float(s)) is not None:
            return FLOAT, f
    elif hint in "DS":
        if tag in ("", TIMESTAMP) and (t := _go_parse_timestamp(s)) is not None:
            return TIMESTAMP, t
        plain = s.replace("_", "")
        if (n := _go_parse_int(plain)) is not None:
            return INT, n
        if _YAML_STYLE_FLOAT.fullmatch(plain) and (f := _go_parse_float(plain)) is not None:
            return FLOAT, f
        # resolve.go:210-259 (0b/-0b/0o/-0o again) cannot succeed where ParseInt(s, 0, 64) failed.
    return STR, s


# --------------------------------------------------------------------------- Go number formatting


def _shortest_digits(f: float) -> tuple[str, int]:
    """The shortest digits that round-trip (Go's and Python's repr agree) and the decimal point's position."""
    sign, digits, exp = Decimal(repr(abs(f))).normalize().as_tuple()
    ds = "".join(map(str, digits))
    return ds, len(ds) + int(exp)


def _fmt_e(ds: str, dp: int, neg: bool) -> str:
    mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
    e = dp - 1
    return f"{'-' if neg else ''}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"


def _fmt_f(ds: str, dp: int, neg: bool) -> str:
    if dp <= 0:
        s = "0." + "0" * -dp + ds
    elif dp >= len(ds):
        s = ds + "0" * (dp - len(ds))
    else:
        s = ds[:dp] + "." + ds[dp:]
    return ("-" if neg else "") + s


def go_format_g(f: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64), as yaml.v3 writes a float (encode.go floatv)."""
    if math.isnan(f):
        return ".nan"
    if math.isinf(f):
        return ".inf" if f > 0 else "-.inf"
    neg = math.copysign(1, f) < 0
    if f == 0:
        return "-0" if neg else "0"
    ds, dp = _shortest_digits(f)
    return _fmt_e(ds, dp, neg) if not -4 <= dp - 1 < 6 else _fmt_f(ds, dp, neg)


def go_json_float(f: float, where: str) -> str:
    """encoding/json's float64 encoding: %f between 1e-6 and 1e21, else %e with e-07 written e-7."""
    if math.isnan(f) or math.isinf(f):
        raise StackFileError(f"{where}: {go_format_g(f)} cannot be passed to a program (the engine fails: json:"
                             f" unsupported value): write a number, or quote it for a string")
    neg = math.copysign(1, f) < 0
    if f == 0:
        return "-0" if neg else "0"
    ds, dp = _shortest_digits(f)
    if 1e-6 <= abs(f) < 1e21:
        return _fmt_f(ds, dp, neg)
    return re.sub(r"e-0(\d)$", r"e-\1", _fmt_e(ds, dp, neg))


# --------------------------------------------------------------------------- composing (decode.go)


_UNTAGGED = "?untagged"  # the resolver answers this for every untagged scalar: the rules above decide


class _NodeResolver(BaseResolver):
    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            return _UNTAGGED
        return super().resolve(kind, value, implicit)


if _LibyamlParser is not None:
    class _Composer(_LibyamlParser, _NodeResolver):
        def __init__(self, stream: str) -> None:
            _LibyamlParser.__init__(self, stream)
            _NodeResolver.__init__(self)
else:  # pragma: no cover
    class _Composer(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer,
                    _NodeResolver):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _NodeResolver.__init__(self)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_LONG_PREFIX):] if tag.startswith(_LONG_PREFIX) else tag


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Decoder:
    """decode.go's decoder into `any`, over PyYAML's node graph (aliases are the anchored node itself)."""

    def __init__(self) -> None:
        self.active: set[int] = set()

    def value(self, node: yaml.Node) -> Any:
        if id(node) in self.active:  # decode.go:533-537
            raise StackFileError(f"line {_line(node)}: an anchor's value contains itself")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.ScalarNode):
                return self.scalar(node)
            if isinstance(node, yaml.SequenceNode):
                return [self.value(item) for item in node.value]
            return self.mapping(node, {}, None)
        finally:
            self.active.discard(id(node))

    @staticmethod
    def scalar(node: yaml.ScalarNode) -> Any:
        """decode.go:565-578 with the node's tag as parser.node (decode.go:170-178) and yaml.go:463-467 set it."""
        if node.tag == _UNTAGGED:
            if node.style:  # quoted, literal or folded: a string
                return node.value
            return resolve("", node.value)[1]
        tag = _short_tag(node.tag)
        if tag == STR:
            return node.value
        try:
            rtag, out = resolve(tag, node.value)
        except StackFileError as e:
            raise StackFileError(f"line {_line(node)}: {e}") from None
        if rtag == BINARY:
            try:
                out = base64.b64decode(re.sub(r"[\r\n]", "", out), validate=True).decode("utf-8", "replace")
            except ValueError:
                raise StackFileError(f"line {_line(node)}: !!binary value contains invalid base64 data") from None
        return out

    def key(self, node: yaml.Node) -> Any:
        k = self.value(node)
        if isinstance(k, (list, dict)):
            raise StackFileError(f"line {_line(node)}: invalid map key: a mapping or list")
        return k if isinstance(k, str) else NonStrKey(_go_fmt_v(_second_pass(k, "")))

    def mapping(self, node: yaml.MappingNode, out: dict[Any, Any], merged: set[Any] | None) -> dict[Any, Any]:
        """decode.go:767-853: keys must be unique by their text; explicit keys win over merged ones (`<<`)."""
        errors = []
        for i, (ki, _) in enumerate(node.value):
            for kj, _ in node.value[i + 1:]:
                if type(ki) is type(kj) and isinstance(ki, yaml.ScalarNode) and ki.value == kj.value:
                    errors.append(f"line {_line(kj)}: mapping key {json.dumps(kj.value)} already defined at line"
                                  f" {_line(ki)}")
        if errors:
            raise StackFileError("; ".join(errors) + " (the engine refuses a key written twice: keep one)")
        merge_node = None
        for knode, vnode in node.value:
            if _is_merge(knode):
                merge_node = vnode
                continue
            k = self.key(knode)
            if merged is not None:
                if k in merged:
                    continue
                merged.add(k)
            out[k] = self.value(vnode)
        if merge_node is not None:
            self.merge(node, merge_node, out, merged)
        return out

    def merge(self, parent: yaml.MappingNode, merge: yaml.Node, out: dict[Any, Any], merged: set[Any] | None) -> None:
        """decode.go:959-996."""
        if merged is None:
            merged = {self.key(k) for k, _ in parent.value}
        items = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
        for item in items:
            if not isinstance(item, yaml.MappingNode):
                raise StackFileError(f"line {_line(item)}: map merge requires map or sequence of maps as the value")
            self.mapping(item, out, merged)


def _is_merge(node: yaml.Node) -> bool:
    """decode.go:998-1000: a plain `<<`, or one tagged !!merge."""
    return isinstance(node, yaml.ScalarNode) and node.value == "<<" and (
        (node.tag == _UNTAGGED and not node.style) or _short_tag(node.tag) == MERGE)


def load(text: str) -> Any:
    """The stack file's first document as yaml.Unmarshal into `any` gives it (yaml.go:156-172): str, int, float,
    bool, None, GoTime, list, dict. Raises StackFileError where the engine would fail."""
    loader = _Composer(text.removeprefix("\ufeff"))  # loaders.go readFileStripUTF8BOM
    try:
        node = loader.get_node() if loader.check_node() else None
    except yaml.YAMLError as e:
        raise StackFileError(f"not valid YAML: {e}") from None
    finally:
        loader.dispose()
    return None if node is None else _Decoder().value(node)


# --------------------------------------------------------------------------- what the program gets


@dataclass(frozen=True)
class _Secret:
    ciphertext: str


def _second_pass(v: Any, where: str) -> Any:
    """The value as config.Value holds it after the re-encode and second decode (loaders.go:219-222)."""
    if isinstance(v, float):  # written with FormatFloat(f, 'g', -1) and read again: 1.0 -> "1" -> the integer 1
        return resolve("", go_format_g(v))[1]
    if isinstance(v, GoTime):  # object.go:490
        return str(v)
    if isinstance(v, list):
        return [_second_pass(item, f"{where}[{i}]") for i, item in enumerate(v)]
    if isinstance(v, dict):
        if len(v) == 1 and isinstance(v.get("secure"), str):
            return _Secret(v["secure"])  # object.go:541-550
        return {str(k): _second_pass(item, f"{where}.{k}") for k, item in v.items()}
    return v


def _go_fmt_v(v: Any) -> str:
    """fmt.Sprintf("%v", v) of a key (object.go:508)."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_format_g(v).replace(".inf", "+Inf").replace(".nan", "NaN")
    return str(v)


def _go_json(v: Any, where: str) -> str:
    """encoding/json.Marshal of the plaintext value (plaintext.go:256-268): keys sorted, <>& escaped."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_json_float(v, where)
    if isinstance(v, _Secret):
        v = ENCRYPTED_PLACEHOLDER
    if isinstance(v, str):
        s = json.dumps(v, ensure_ascii=False)
        return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    if isinstance(v, list):
        return "[" + ",".join(_go_json(item, f"{where}[{i}]") for i, item in enumerate(v)) + "]"
    return "{" + ",".join(f"{_go_json(k, where)}:{_go_json(v[k], f'{where}.{k}')}" for k in sorted(v)) + "}"


def _has_secret(v: Any) -> bool:
    if isinstance(v, _Secret):
        return True
    if isinstance(v, list):
        return any(map(_has_secret, v))
    return isinstance(v, dict) and any(map(_has_secret, v.values()))


def program_string(v: Any, where: str) -> str:
    """One config value (as `load` gives it) -> the string the program gets (object.go:403-420, map.go:31-70)."""
    if v is None:  # decode.go:406-409 + 848: the key stays, with config.Value's zero value
        return ""
    obj = _second_pass(v, where)
    if isinstance(obj, _Secret):
        return ENCRYPTED_PLACEHOLDER
    if isinstance(obj, str):
        return obj
    return _go_json(obj, where)


@dataclass
class StackConfig:
    """What the engine hands the program: {full key: string}, which keys are secret, and the engine's warnings."""

    config: dict[str, str] = field(default_factory=dict)
    secret_keys: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def engine_config(doc: Any, project: str = PROJECT) -> StackConfig:
    """A loaded stack file -> the engine's config map. Raises StackFileError where the engine would fail."""
    if doc is None:
        return StackConfig()
    if not isinstance(doc, dict) or any(isinstance(k, NonStrKey) for k in doc):
        raise StackFileError("must be a stack settings file: a mapping with a `config:` map")
    raw = doc.get("config")
    if raw is None:
        return StackConfig()
    if not isinstance(raw, dict):
        raise StackFileError("`config:` must be a map of keys to values")
    out = StackConfig()
    written: dict[str, str] = {}
    empty = []
    for key, value in raw.items():
        if isinstance(key, NonStrKey):
            raise StackFileError(f"config key {key} is not a string: write it as a name such as {project}:network")
        full = key if ":" in key else f"{project}:{key}"  # loaders.go:61-89
        if full in written:  # Go's map keeps one of the two, whichever its iteration meets last
            raise StackFileError(f"`{written[full]}` and `{key}` are the same key ({full}: the engine prefixes"
                                 f" keys without a namespace with the project's name): keep one")
        written[full] = key
        if value is None:
            empty.append(full)
        out.config[full] = program_string(value, full)
        if _has_secret(_second_pass(value, full)):
            out.secret_keys.append(full)
    if empty:  # loaders.go:379-405
        keys = ", ".join(f'"{k}"' for k in empty)
        out.warnings.append(f"No value for configuration key{'s' if len(empty) > 1 else ''} {keys}: the engine passes"
                            ' "" (a key with nothing under it, or ~); this program reads that as not set')
    return out


def read(text: str, project: str = PROJECT) -> StackConfig:
    """A Pulumi.<stack>.yaml's text -> what the engine hands the program (see the module's docstring)."""
    return engine_config(load(text), project)


def config_of(config: Mapping[str, Any], project: str = PROJECT) -> StackConfig:
    """A config dict of Python values, written with `dump` as a stack file's `config:` and read back by the engine."""
    return read(dump({"config": dict(config)}), project)


# --------------------------------------------------------------------------- writing


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, with every string quoted that yaml.v3 would otherwise read as something else
    (0o17, 08, 1e3: plain in YAML 1.1, numbers to the engine)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if resolve("", data)[0] != STR:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return yaml.SafeDumper.represent_str(dumper, data)


_Dumper.add_representer(str, _represent_str)


def dump(doc: Any) -> str:
    """YAML that the engine reads back as exactly these values (strings stay strings)."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=True)
