"""YAML loading that remembers where every key came from.

Config files and resources are validated after loading; when a field is wrong
the error must say *which line*. ``load_documents`` returns plain Python data
plus a :class:`Locator` that maps a key path (``("spec", "allow", "db_labels")``)
to its line number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from jumpgate.core.errors import ConfigError

Path_ = tuple[str | int, ...]


@dataclass
class Locator:
    """Line numbers (1-based) of the keys and items of one YAML document."""

    source: str
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Sequence[str | int]) -> int | None:
        """Line of the deepest known prefix of ``path``."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)

    def where(self, path: Sequence[str | int]) -> str:
        """``"file.yaml, line 7"`` or just the source when the line is unknown."""
        ln = self.line(path)
        return f"{self.source}, line {ln}" if ln else self.source


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            sub = (*path, key)
            lines[sub] = key_node.start_mark.line + 1
            _walk(value_node, sub, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, i)
            lines[sub] = item.start_mark.line + 1
            _walk(item, sub, lines)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_documents(text: str, source: str = "<input>") -> list[tuple[Any, Locator]]:
    """Parse every YAML document in ``text``; empty documents are skipped.

    Raise :class:`ConfigError` with the file and line on a syntax error.
    """
    try:
        nodes = list(yaml.compose_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    out: list[tuple[Any, Locator]] = []
    for node in nodes:
        if node is None:
            continue
        loader = _StrictLoader("")
        try:
            data = loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, source) from None
        finally:
            loader.dispose()
        loc = Locator(source)
        loc.lines[()] = node.start_mark.line + 1
        _walk(node, (), loc.lines)
        out.append((data, loc))
    return out


def load_one(text: str, source: str = "<input>") -> tuple[Any, Locator]:
    """Parse a file that must hold exactly one YAML document (a mapping)."""
    docs = load_documents(text, source)
    if not docs:
        raise ConfigError(f"{source}: the file is empty", hint="write a YAML mapping into it")
    if len(docs) > 1:
        raise ConfigError(f"{source}: expected one YAML document, found {len(docs)}")
    data, loc = docs[0]
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a YAML mapping at the top, got {type(data).__name__}"
        )
    return data, loc


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
    return ConfigError(f"{where}: invalid YAML: {problem}", hint="fix the YAML syntax at that spot")


def format_path(path: Iterable[str | int]) -> str:
    """``spec.allow.rules[0].verbs`` from a key path."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def dump(data: Any) -> str:
    """YAML in Teleport's style: block form, keys in insertion order, unicode kept."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
