"""Reading a tbot YAML mapping field by field, with errors that name the key and the line.

The tbot config is small and polymorphic (``type:`` decides which keys an
output may have, destinations have a shorthand form), so it is read by hand
rather than through pydantic: every problem becomes one :class:`ConfigError`
that reads ``file, line N: key.path: what is wrong`` and, for an unknown key,
suggests the closest allowed one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

from jumpgate.core.durations import parse_duration
from jumpgate.core.errors import BadParameter, ConfigError
from jumpgate.core.yamlutil import Locator, format_path

KeyPath = tuple[str | int, ...]

_TRUE = frozenset({"yes", "y", "true", "on", "1"})
_FALSE = frozenset({"no", "n", "false", "off", "0"})


def kind_of(value: Any) -> str:
    """A YAML-ish name of a value's type for messages."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Section:
    """One YAML mapping of the config, at ``path``, with the locator of its file."""

    def __init__(self, data: dict[str, Any], path: KeyPath, loc: Locator) -> None:
        self.data = data
        self.path = path
        self.loc = loc

    # ------------------------------------------------------------------ errors
    def error(self, key: str | int | None, message: str, hint: str | None = None) -> ConfigError:
        """``file, line N: a.b.key: message`` for ``key`` of this section (or the section)."""
        path = self.path if key is None else (*self.path, key)
        return error_at(self.loc, path, message, hint)

    def check_keys(self, allowed: Iterable[str], *, hints: dict[str, str] | None = None) -> None:
        """Refuse keys outside ``allowed`` (Teleport parses v2 configs with KnownFields)."""
        allowed = list(allowed)
        for key in self.data:
            if key in allowed:
                continue
            name = str(key)
            hint = (hints or {}).get(name)
            if hint is None:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = (
                    f'did you mean "{close[0]}"?'
                    if close
                    else "valid keys here: " + ", ".join(allowed)
                )
            raise self.error(name, "unknown key", hint)

    # ------------------------------------------------------------------ scalars
    def has(self, key: str) -> bool:
        """Whether ``key`` is present with a non-null value."""
        return self.data.get(key) is not None

    def text(self, key: str, default: str = "", *, required: bool = False) -> str:
        """A string (numbers are accepted and converted); ``required`` refuses empty."""
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise self.error(key, "must not be empty", f"set {key}")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f"expected a string, got {kind_of(value)}")
        return str(value).strip()

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        """A string that must be one of ``choices``."""
        options = list(choices)
        value = self.text(key, default)
        if value not in options:
            raise self.error(
                key,
                f"invalid value {value!r}",
                "valid values: " + ", ".join(o if o else repr(o) for o in options),
            )
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        """A boolean (``yes``/``no``/``true``/``false`` strings too)."""
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise self.error(key, f"expected true or false, got {value!r}")

    def duration(self, key: str) -> timedelta | None:
        """A positive Go duration (``20m``, ``1h``), or None when absent."""
        value = self.data.get(key)
        if value is None or value == "":
            return None
        try:
            td = parse_duration(value, field=key)
        except BadParameter as exc:
            raise self.error(key, f"{value!r} is not a duration", exc.hint) from None
        if td <= timedelta(0):
            raise self.error(key, "must be a positive duration", "for example 20m or 1h")
        return td

    def strings(self, key: str) -> list[str]:
        """A list of strings (a single string is accepted as a one-item list)."""
        value = self.data.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value.strip()] if value.strip() else []
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of strings, got {kind_of(value)}")
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise error_at(
                    self.loc, (*self.path, key, i), f"expected a string, got {kind_of(item)}"
                )
            if str(item).strip():
                out.append(str(item).strip())
        return out

    # ------------------------------------------------------------------ nesting
    def section(self, key: str) -> Section | None:
        """The mapping under ``key`` (None when absent or null)."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {kind_of(value)}")
        return Section(value, (*self.path, key), self.loc)

    def sections(self, key: str) -> Iterator[Section]:
        """Each mapping of the list under ``key``."""
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {kind_of(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise error_at(
                    self.loc, (*self.path, key, i), f"expected a mapping, got {kind_of(item)}"
                )
            yield Section(item, (*self.path, key, i), self.loc)


def error_at(loc: Locator, path: KeyPath, message: str, hint: str | None = None) -> ConfigError:
    """A :class:`ConfigError` located at ``path`` of the file ``loc`` describes."""
    key = format_path(path)
    where = loc.where(path)
    return ConfigError(f"{where}: {key}: {message}" if key else f"{where}: {message}", hint=hint)
