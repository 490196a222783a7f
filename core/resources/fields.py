"""Reusable pydantic field types for Teleport-shaped resources.

Each type accepts what Teleport's YAML accepts on input and is written back in
Teleport's form by :mod:`jumpgate.core.resources.serialize`:

* :data:`GoDuration` — ``"30h"``, ``"1h30m"`` or a number of seconds → ``timedelta``;
* :data:`Timestamp` — RFC 3339 text (or a YAML timestamp) → timezone-aware ``datetime``;
* :data:`LabelSelector` — ``{key: value | [values]}`` → ``dict[str, list[str]]``;
* :data:`StringList` — a string or a list of strings → ``list[str]``;
* :data:`PemBytes` — PEM text (or base64, as Teleport's JSON writes ``[]byte``) → ``bytes``.

Validators raise ``ValueError`` so pydantic can attach the field path; the parser
in :mod:`jumpgate.core.resources.parse` turns those into ``BadParameter``.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from jumpgate.core.durations import parse_duration
from jumpgate.core.errors import JumpgateError


def secret_field(default: Any = b"") -> Any:
    """A field that :func:`resource_to_dict` drops unless ``with_secrets=True``."""
    return Field(default=default, json_schema_extra={"secret": True})


def _scalar_text(value: Any) -> str:
    """YAML turns ``yes``/``1``/``off`` into bool/int; labels and lists want text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _to_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    try:
        out: timedelta = parse_duration(value)
    except JumpgateError as exc:
        raise ValueError(
            f"{value!r} is not a duration (use Go syntax such as 30h or 1h30m)"
        ) from exc
    return out


def _to_timestamp(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Go writes nanoseconds; Python keeps microseconds.
        if "." in text:
            head, _, rest = text.partition(".")
            digits = "".join(c for c in rest if c.isdigit())
            tail = rest[len(digits) :]
            text = f"{head}.{digits[:6].ljust(6, '0')}{tail}"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an RFC 3339 time such as 2025-01-31T12:00:00Z"
            ) from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _to_string_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str | int | float | bool):
        return [_scalar_text(value)]
    if isinstance(value, list | tuple):
        return [_scalar_text(v) for v in value]
    return value


def _to_selector(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return value
    return {_scalar_text(k): _to_string_list(v) for k, v in value.items()}


def _check_selector(value: dict[str, list[str]]) -> dict[str, list[str]]:
    wild = value.get("*")
    if wild is not None and wild != ["*"]:
        shown = wild[0] if len(wild) == 1 else wild
        raise ValueError(f"selector *:{shown} is not supported")
    return value


def _to_labels(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {_scalar_text(k): _scalar_text(v) for k, v in value.items()}
    return value


def _to_bytes(value: Any) -> Any:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        if "-----BEGIN" in value or not value.strip():
            return value.encode()
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value.encode()
    return value


#: A Go duration (``30h``); written back as ``30h0m0s``.
GoDuration = Annotated[timedelta, BeforeValidator(_to_duration)]
#: A point in time, always timezone-aware UTC; written back as RFC 3339.
Timestamp = Annotated[datetime, BeforeValidator(_to_timestamp)]
#: One string or a list of strings, stored as a list.
StringList = Annotated[list[str], BeforeValidator(_to_string_list)]


class SelectorMarker:
    """Annotation marking label-selector fields: one-value lists are written as a string."""


#: A role label selector: values may be one string or a list.
LabelSelector = Annotated[
    dict[str, list[str]],
    BeforeValidator(_to_selector),
    AfterValidator(_check_selector),
    SelectorMarker(),
]
#: Resource labels (metadata.labels): plain string to string.
Labels = Annotated[dict[str, str], BeforeValidator(_to_labels)]
#: Key or certificate material; PEM text on input and output.
PemBytes = Annotated[bytes, BeforeValidator(_to_bytes)]


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC like Go's ``time.RFC3339Nano``: ``2025-01-31T12:00:00.5Z``."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def dedupe(values: list[str]) -> list[str]:
    """Drop repeated values, keeping the first occurrence's position."""
    return list(dict.fromkeys(values))
