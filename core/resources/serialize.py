"""Parsing (with file/line errors) and writing resources in Teleport's YAML/JSON shape."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from jumpgate.core.durations import format_duration
from jumpgate.core.errors import BadParameter
from jumpgate.core.resources.base import Resource, canonical_kind, resource_class, supported_kinds
from jumpgate.core.resources.fields import SelectorMarker, format_timestamp
from jumpgate.core.yamlutil import Locator, dump, format_path, load_documents

R = TypeVar("R", bound=Resource)

# --- parsing -----------------------------------------------------------------------------


def parse_resource(data: Mapping[str, Any], *, locator: Locator | None = None) -> Resource:
    """Validate one resource given as plain data (a YAML/JSON mapping); dispatch on ``kind``.

    Kind aliases (``roles``, ``database``, ``cap``...) are accepted. Problems raise
    :class:`BadParameter` naming the resource, the field path and, with a ``locator``,
    the file and line: ``role.yaml, line 9: role "x": spec.allow.rules[0].verbs: ...``.
    """
    where = f"{locator.where(())}: " if locator else ""
    if not isinstance(data, Mapping):
        raise BadParameter(
            f"{where}expected a resource (a mapping with kind, version, metadata and spec), "
            f"got {type(data).__name__}",
            hint="each YAML document must be one resource",
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind.strip():
        raise BadParameter(
            f'{where}resource is missing "kind"',
            hint=f"add a kind: line; supported kinds: {', '.join(supported_kinds())}",
        )
    try:
        cls = resource_class(kind)
    except BadParameter as exc:
        kwhere = f"{locator.where(('kind',))}: " if locator else ""
        raise BadParameter(f"{kwhere}{exc.message}", hint=exc.hint) from None
    return validate_resource(cls, {**data, "kind": cls.KIND}, locator=locator)


def validate_resource(
    cls: type[R], data: Mapping[str, Any], *, locator: Locator | None = None
) -> R:
    """Validate ``data`` as ``cls``, converting pydantic errors to :class:`BadParameter`."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_error(exc, kind=cls.KIND, data=data, locator=locator) from None


def parse_documents(text: str, source: str) -> list[Resource]:
    """Parse every resource in a (multi-document) YAML text; errors name ``source`` and line."""
    return [parse_resource(data, locator=loc) for data, loc in load_documents(text, source)]


_INTERNAL_LOC = re.compile(r"^(\[key\]|function-|lax-|union\[|tagged-union|json-or-python)")


def _clean_loc(loc: Iterable[str | int]) -> tuple[str | int, ...]:
    return tuple(p for p in loc if not (isinstance(p, str) and _INTERNAL_LOC.match(p)))


def _clean_msg(err: Mapping[str, Any]) -> str:
    typ = err.get("type", "")
    if typ == "missing":
        return "field required"
    if typ == "extra_forbidden":
        return "unknown field"
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    if len(msg) > 1 and msg[0].isupper() and msg[1].islower():
        msg = msg[0].lower() + msg[1:]
    return msg


def _hint(kind: str, path: tuple[str | int, ...], msg: str) -> str:
    last = str(path[-1]) if path else kind
    shown = format_path(path) or "the resource"
    if "missing verbs" in msg:
        return "every rule needs verbs, e.g. verbs: [read, list]"
    if "missing resources" in msg:
        return "every rule needs resources (kinds), e.g. resources: [db, db_server]"
    if "DNS-1035" in msg:
        return "use lowercase letters, digits and dashes, e.g. my-db-1"
    if msg.startswith("field required"):
        return f"add {last}: to the {kind} resource"
    if msg == "unknown field":
        return f"check the spelling of {last!r}; it is not a {kind} field at that place"
    if "role version" in msg:
        return "use version: v7 (v3 to v8 are accepted)"
    return f"fix {shown} in the {kind} resource and try again"


def validation_error(
    exc: ValidationError,
    *,
    kind: str,
    data: Mapping[str, Any] | None = None,
    locator: Locator | None = None,
) -> BadParameter:
    """Turn a pydantic ``ValidationError`` into one readable :class:`BadParameter`."""
    name = ""
    meta = (data or {}).get("metadata")
    if isinstance(meta, Mapping) and meta.get("name") is not None:
        name = str(meta.get("name"))
    what = f'{kind} "{name}"' if name else kind
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for err in exc.errors(include_url=False):
        problems.append((_clean_loc(err.get("loc", ())), _clean_msg(err)))
    if not problems:  # pragma: no cover - pydantic always reports something
        return BadParameter(f"{what}: invalid resource")
    path, msg = problems[0]

    def one(p: tuple[str | int, ...], m: str) -> str:
        return f"{format_path(p)}: {m}" if p else m

    where = f"{locator.where(path)}: " if locator else ""
    text = f"{where}{what}: {one(path, msg)}"
    if len(problems) > 1:
        rest = "; ".join(one(p, m) for p, m in problems[1:4])
        more = len(problems) - 1
        text += f" (and {more} more problem{'s' if more > 1 else ''}: {rest})"
    return BadParameter(text, hint=_hint(kind, path, msg))


# --- writing -----------------------------------------------------------------------------


def _is_secret(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict | bytes) and len(value) == 0)


def _value(value: Any, with_secrets: bool) -> Any:
    if isinstance(value, BaseModel):
        return _model(value, with_secrets)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {str(k): _value(v, with_secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_value(v, with_secrets) for v in value]
    return str(value)


def _model(model: BaseModel, with_secrets: bool, keep: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if _is_secret(field) and not with_secrets:
            continue
        raw = getattr(model, name)
        if raw is False and field.default is False:
            continue
        value = _value(raw, with_secrets)
        if isinstance(value, dict) and any(isinstance(m, SelectorMarker) for m in field.metadata):
            # Teleport's utils.Strings: a single value is written as a plain string.
            value = {
                k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in value.items()
            }
        if _is_empty(value) and name not in keep:
            continue
        out[name] = value
    for key, raw in (model.model_extra or {}).items():
        out[key] = _value(raw, with_secrets)
    return out


def resource_to_dict(r: Resource, *, with_secrets: bool = False) -> dict[str, Any]:
    """Teleport's YAML/JSON form: kind, version, metadata, spec(, status); empties omitted.

    Durations are Go strings (``30h0m0s``), times RFC 3339 UTC, key material PEM text.
    Secret fields (CA private keys) are dropped unless ``with_secrets``.
    """
    return _model(r, with_secrets, keep=("spec",))


def resources_to_list(resources: Iterable[Resource], *, with_secrets: bool = False) -> list[Any]:
    """``[resource_to_dict(r) ...]`` — the JSON form of ``tctl get --format=json``."""
    return [resource_to_dict(r, with_secrets=with_secrets) for r in resources]


def dump_yaml(resources: Iterable[Resource], *, with_secrets: bool = False) -> str:
    """YAML documents separated by ``---`` lines, as ``tctl get`` prints them."""
    return "---\n".join(dump(resource_to_dict(r, with_secrets=with_secrets)) for r in resources)


__all__ = [
    "canonical_kind",
    "dump_yaml",
    "parse_documents",
    "parse_resource",
    "resource_to_dict",
    "resources_to_list",
    "validate_resource",
    "validation_error",
]
