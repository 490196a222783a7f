"""Field types and small helpers shared by the ``teleport.yaml`` models.

Conversions happen in *before* validators so that pydantic reports one clean
error per field (no union branch noise), and so that Teleport's loose YAML
habits (``enabled: "yes"``, ``ca_pin: ""``, ``public_addr: host:443``) load.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from jumpgate.core.durations import parse_duration
from jumpgate.core.errors import BadParameter, ConfigError

#: Protocols a static ``db_service.databases`` entry may name (types.DatabaseProtocols).
DB_PROTOCOLS: tuple[str, ...] = (
    "postgres",
    "mysql",
    "mongodb",
    "redis",
    "cockroachdb",
    "sqlserver",
    "snowflake",
    "cassandra",
    "elasticsearch",
    "opensearch",
    "dynamodb",
    "oracle",
    "clickhouse",
    "clickhouse-http",
    "spanner",
)

#: Headers Teleport sets itself; ``rewrite.headers`` may not touch them (lower case).
RESERVED_HEADERS: frozenset[str] = frozenset(
    {
        "teleport-jwt-assertion",
        "cf-access-token",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-server",
    }
)

_TRUE = frozenset({"yes", "y", "true", "on", "1"})
_FALSE = frozenset({"no", "n", "false", "off", "0"})
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9_*.-]+$")
_SCHEMES = ("tcp://", "http://", "https://")


class Invalid(ValueError):
    """A field value is wrong; ``hint`` travels to the final :class:`ConfigError`."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class Strict(BaseModel):
    """Base of every section whose keys are known: an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_section(cls, data: Any) -> Any:
        # ``section:`` with nothing under it is YAML null; Teleport reads it as empty.
        return {} if data is None else data


class Open(Strict):
    """Base of sections we accept but do not interpret: any key goes."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)


def _scalar_str(v: Any, what: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return str(v)
    raise Invalid(f"{what}: expected a string, got {kind_of(v)}")


def kind_of(v: Any) -> str:
    """Short English name of a YAML value's type, for messages."""
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({'yes' if v else 'no'})"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, int | float):
        return f"a number ({v})"
    return f"{type(v).__name__} {v!r}"


def to_bool(v: Any) -> Any:
    """Teleport's ``utils.ParseBool``: yes/no, y/n, true/false, on/off, 1/0."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise Invalid(
        f"expected yes/no, true/false or on/off, got {v!r}",
        hint='write "yes" or "no"',
    )


def _to_word(v: Any) -> Any:
    # YAML 1.1 turns bare on/off into booleans; these fields are words.
    if isinstance(v, bool):
        return "on" if v else "off"
    return v


def _to_str_list(v: Any) -> Any:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v.strip() else []
    if isinstance(v, list):
        return [_scalar_str(x, "list item") for x in v]
    raise Invalid(f"expected a string or a list of strings, got {kind_of(v)}")


def _to_duration(v: Any) -> Any:
    try:
        return parse_duration(v)
    except BadParameter as exc:
        raise Invalid(
            f"{v!r} is not a duration", hint="use Go duration syntax such as 30s, 5m or 1h"
        ) from exc


def _to_labels(v: Any) -> Any:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping of labels (key: value), got {kind_of(v)}")
    return {_scalar_str(k, "label key"): _scalar_str(x, f"label {k}") for k, x in v.items()}


def _to_label_match(v: Any) -> Any:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Invalid(f"expected a mapping of labels (key: value or [values]), got {kind_of(v)}")
    out: dict[str, list[str]] = {}
    for k, x in v.items():
        vals = x if isinstance(x, list) else [x]
        out[_scalar_str(k, "label key")] = [_scalar_str(i, f"label {k}") for i in vals]
    return out


#: A boolean written the Teleport way (``yes``/``no``/``true``/``on``/...).
YesNo = Annotated[bool, BeforeValidator(to_bool)]
#: A word field that YAML may have turned into a boolean (``off`` → ``"off"``).
Word = Annotated[str, BeforeValidator(_to_word)]
#: A string or a list of strings, stored as a list (``""`` is the empty list).
StrList = Annotated[list[str], BeforeValidator(_to_str_list)]
#: A Go duration string (``30s``, ``1h``); plain numbers are seconds.
Duration = Annotated[timedelta, BeforeValidator(_to_duration)]
#: ``{key: value}`` labels; scalar values are turned into strings.
Labels = Annotated[dict[str, str], BeforeValidator(_to_labels)]
#: Label matchers ``{key: value | [values]}``, stored as lists.
LabelMatch = Annotated[dict[str, list[str]], BeforeValidator(_to_label_match)]


def dns_label_error(name: str) -> str | None:
    """Why ``name`` is not a DNS-1035 label (database/app names), or None when it is."""
    if not name:
        return "the name is empty"
    if len(name) > 63:
        return f"{name!r} is longer than 63 characters"
    if not _DNS1035.match(name):
        return (
            f"{name!r} is not a valid name: use lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'"
        )
    return None


def parse_hostport(s: str, default_port: int) -> tuple[str, int]:
    """Split ``host:port`` the way Teleport's ``utils.ParseHostPortAddr`` does.

    Accepts ``host``, ``host:port``, ``[::1]:3080``, ``[::1]``, a bare IPv6 address,
    ``:3080`` (all interfaces, returned as ``0.0.0.0``) and a ``tcp://``,
    ``http://`` or ``https://`` prefix. Raise :class:`BadParameter` on anything else.
    """
    raw = s
    s = s.strip()
    for scheme in _SCHEMES:
        if s.lower().startswith(scheme):
            s = s[len(scheme) :].rstrip("/")
            break
    bad = BadParameter(
        f"{raw!r} is not a valid address",
        hint="use host:port, for example teleport.example.com:443 or 0.0.0.0:3080",
    )
    if not s:
        raise bad
    port_s: str | None = None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise bad
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise bad
            port_s = rest[1:]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise bad
    elif s.count(":") > 1:
        host = s  # bare IPv6 without a port
        if not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise bad
    elif ":" in s:
        host, port_s = s.split(":", 1)
        host = host or "0.0.0.0"
    else:
        host = s
    if ":" not in host and not _HOST.match(host):
        raise bad
    if port_s is None:
        return host, default_port
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise bad
    return host, int(port_s)


def join_hostport(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def try_read_value_as_file(value: str) -> str:
    """Teleport's ``utils.TryReadValueAsFile``: an absolute path is read, anything else returned.

    The file content is stripped of surrounding whitespace; a missing, unreadable
    or empty file is a :class:`ConfigError`.
    """
    if not Path(value).is_absolute():
        return value
    try:
        content = Path(value).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{value}: file not found",
            hint="write the value into that file, or give the value itself instead of a path",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{value}: cannot read: {exc.strerror or exc}",
            hint="check the file's permissions (run as the user that owns it, or with sudo)",
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{value}: not a text file") from None
    if not content:
        raise ConfigError(f"{value} is empty", hint="write the value into that file")
    return content
