"""Turn a pydantic ``ValidationError`` into one :class:`ConfigError` with file, line and key."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from jumpgate.core.errors import ConfigError
from jumpgate.core.yamlutil import Locator, format_path

from ._common import Invalid, kind_of

_KeyPath = tuple[str | int, ...]


def validation_error(
    exc: ValidationError, data: Any, loc: Locator, root: type[BaseModel]
) -> ConfigError:
    """One :class:`ConfigError` for all of ``exc``'s problems, the first one leading.

    Each problem reads ``file, line N: key.path: what is wrong``; the hint is the
    first problem's (for an unknown key: the closest allowed key).
    """
    lines: list[str] = []
    hint: str | None = None
    # An unknown key often explains a "missing" one (a typo), so it leads.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        path = _clean_path(err["loc"], data, err["type"])
        msg, err_hint = _describe(err, path, root)
        key = format_path(path)
        lines.append(f"{loc.where(path)}: {key}: {msg}" if key else f"{loc.where(path)}: {msg}")
        if hint is None:
            hint = err_hint
    message = lines[0]
    if len(lines) > 1:
        message += "\n" + "\n".join(f"  also {line}" for line in lines[1:])
    return ConfigError(message, hint=hint)


def _clean_path(raw: Sequence[str | int], data: Any, kind: str) -> _KeyPath:
    """Keep the parts of a pydantic ``loc`` that are real keys of the YAML data.

    Pydantic adds union/validator tags (``function-after[...]``); a missing key is
    kept although the data does not hold it.
    """
    out: list[str | int] = []
    cur = data
    for i, part in enumerate(raw):
        last = i == len(raw) - 1
        in_dict = isinstance(cur, dict) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_dict or in_list:
            out.append(part)
            cur = cur[part]
        elif last and kind in ("missing", "extra_forbidden"):
            out.append(part)
        else:
            cur = None
    return tuple(out)


def _describe(err: ErrorDetails, path: _KeyPath, root: type[BaseModel]) -> tuple[str, str | None]:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, path[:-1])
        name = str(path[-1]) if path else ""
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            return "unknown key", f'did you mean "{close[0]}"?'
        return "unknown key", ("valid keys here: " + ", ".join(allowed)) if allowed else None
    if kind == "missing":
        return "missing required key", f"add {path[-1]}: to this entry" if path else None
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, Invalid):
            return str(cause), cause.hint
        return str(cause) if cause is not None else err["msg"], None
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), choices, n=1)
        if close:
            hint: str | None = f'did you mean "{close[0]}"?'
        else:
            hint = f"use one of: {', '.join(choices)}" if choices else None
        return f"expected {ctx.get('expected')}, got {value!r}", hint
    if kind in ("string_type", "str_type"):
        return f"expected a string, got {kind_of(value)}", None
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping (key: value), got {kind_of(value)}", None
    if kind == "list_type":
        return f"expected a list, got {kind_of(value)}", None
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {kind_of(value)}", None
    if kind in ("bool_type", "bool_parsing"):
        return f"expected yes/no, got {kind_of(value)}", 'write "yes" or "no"'
    if kind == "too_short":
        return f"must not be empty, got {kind_of(value)}", None
    return err["msg"], None


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None``."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _allowed_keys(root: type[BaseModel], path: _KeyPath) -> list[str]:
    """Keys the model at ``path`` (below ``root``) accepts, or [] when it is not a model."""
    tp: Any = root
    for part in path:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if get_origin(tp) is not list:
                return []
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part)
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []
