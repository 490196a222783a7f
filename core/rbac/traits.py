"""Role templates: ``{{internal.db_users}}``, ``{{email.local(external.email)}}``, ...

Teleport lets role values refer to the user's traits. One value may hold one
template with a literal prefix and suffix around it; a trait with several values
expands to several values; a missing trait drops the value. ``{{internal.jwt}}``
is left as written (the App Service fills it in per request).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jumpgate.core.errors import BadParameter
from jumpgate.core.resources.role import Role, RoleConditions

# Prefix and suffix hold no braces; the expression may hold them only inside string
# literals (Teleport allows none at all there; "${1}" and "{2}" are handy in regexps).
_TEMPLATE = re.compile(r"^(?P<prefix>[^{}]*)\{\{(?P<expr>.+)\}\}(?P<suffix>[^{}]*)$", re.DOTALL)
_TOKEN = re.compile(
    r"""\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<punct>[.()\[\],]))"""
)
NAMESPACES = ("internal", "external")
#: The trait the App Service substitutes itself; never expanded here.
JWT_TRAIT = "jwt"


@dataclass(frozen=True)
class Var:
    """``namespace.name`` or ``namespace["name"]``: the values of one trait."""

    namespace: str
    name: str


@dataclass(frozen=True)
class Lit:
    """A string literal argument."""

    value: str


@dataclass(frozen=True)
class Call:
    """A function call: ``email.local(...)``, ``regexp.replace(...)``, ``strings.upper(...)``."""

    func: str
    args: tuple[Var | Lit | Call, ...]


Expr = Var | Lit | Call


@dataclass(frozen=True)
class Template:
    """A parsed role value: literal when ``expr`` is None."""

    raw: str
    prefix: str = ""
    expr: Expr | None = None
    suffix: str = ""


def _bad(value: str, why: str) -> BadParameter:
    return BadParameter(
        f"{value!r}: {why}",
        hint='write one template per value, e.g. "{{internal.db_users}}" or '
        '"{{regexp.replace(external.groups, \\"^team-(.*)$\\", \\"$1\\")}}"',
    )


class _Parser:
    def __init__(self, raw: str, text: str) -> None:
        self.raw = raw
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = text.rstrip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise _bad(raw, f"unexpected {text[pos:].strip()!r} in template")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "")

    def take(self, kind: str, value: str | None = None) -> str:
        k, v = self.peek()
        if k != kind or (value is not None and v != value):
            want = value or kind
            got = v or "end of template"
            raise _bad(self.raw, f"expected {want!r} in template, got {got!r}")
        self.i += 1
        return v

    def string(self) -> str:
        tok = self.take("str")
        if tok.startswith("`"):
            return tok[1:-1]
        try:
            out = json.loads(tok)
        except ValueError:
            return tok[1:-1]
        return str(out)

    def expr(self) -> Expr:
        if self.peek()[0] == "str":
            return Lit(self.string())
        first = self.take("ident")
        if self.peek() == ("punct", "["):
            self.take("punct", "[")
            name = self.string()
            self.take("punct", "]")
            return self._var(first, name)
        self.take("punct", ".")
        second = self.take("ident")
        if self.peek() != ("punct", "("):
            return self._var(first, second)
        self.take("punct", "(")
        args: list[Expr] = []
        if self.peek() != ("punct", ")"):
            args.append(self.expr())
            while self.peek() == ("punct", ","):
                self.take("punct", ",")
                args.append(self.expr())
        self.take("punct", ")")
        return self._call(f"{first}.{second}", tuple(args))

    def _var(self, namespace: str, name: str) -> Var:
        if namespace not in NAMESPACES:
            raise _bad(self.raw, f'unknown namespace "{namespace}" (use internal or external)')
        return Var(namespace, name)

    def _call(self, func: str, args: tuple[Expr, ...]) -> Call:
        arity = {"email.local": 1, "strings.upper": 1, "strings.lower": 1, "regexp.replace": 3}
        if func not in arity:
            raise _bad(self.raw, f"unsupported function {func}()")
        if len(args) != arity[func]:
            raise _bad(self.raw, f"{func}() takes {arity[func]} argument(s), got {len(args)}")
        if isinstance(args[0], Lit):
            raise _bad(self.raw, f"the first argument of {func}() must be a trait")
        if func == "regexp.replace":
            if not (isinstance(args[1], Lit) and isinstance(args[2], Lit)):
                raise _bad(
                    self.raw, "regexp.replace() needs string literals as pattern and replacement"
                )
            try:
                re.compile(args[1].value)
            except re.error as exc:
                raise _bad(
                    self.raw, f"invalid regular expression {args[1].value!r}: {exc}"
                ) from None
        return Call(func, args)


def parse_template(value: str) -> Template:
    """Parse one role value; raise :class:`BadParameter` when its template is malformed."""
    if "{{" not in value and "}}" not in value:
        return Template(raw=value)
    m = _TEMPLATE.match(value)
    if not m:
        raise _bad(
            value,
            "is using template brackets '{{' or '}}', however expression does not parse, "
            "make sure the format is {{expression}}",
        )
    parser = _Parser(value, m.group("expr"))
    expr = parser.expr()
    if parser.peek()[0] != "eof":
        raise _bad(value, f"unexpected {parser.peek()[1]!r} after the expression")
    return Template(raw=value, prefix=m.group("prefix"), expr=expr, suffix=m.group("suffix"))


def _go_expand(m: re.Match[str], template: str) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``."""
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if template.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        ref = re.match(r"\$(?:\{(\w+)\}|(\w+))", template[i:])
        if not ref:
            out.append("$")
            i += 1
            continue
        name = ref.group(1) or ref.group(2)
        i += ref.end()
        group: Any = int(name) if name.isdigit() else name
        try:
            out.append(m.group(group) or "")
        except IndexError:  # unknown group number or name expands to nothing, as in Go
            out.append("")
    return "".join(out)


def _email_local(value: str) -> str | None:
    addr = value.strip()
    if "<" in addr and addr.endswith(">"):
        addr = addr[addr.rindex("<") + 1 : -1]
    local, sep, domain = addr.partition("@")
    if not sep or not local or not domain:
        return None
    return local


def _eval(expr: Expr, traits: Mapping[str, Sequence[str]]) -> list[str]:
    if isinstance(expr, Lit):
        return [expr.value]
    if isinstance(expr, Var):
        return [str(v) for v in traits.get(expr.name, ())]
    values = _eval(expr.args[0], traits)
    if expr.func == "email.local":
        return [local for v in values if (local := _email_local(v))]
    if expr.func == "strings.upper":
        return [v.upper() for v in values]
    if expr.func == "strings.lower":
        return [v.lower() for v in values]
    # regexp.replace: values that do not match are dropped, like Teleport.
    pattern, repl = expr.args[1], expr.args[2]
    assert isinstance(pattern, Lit) and isinstance(repl, Lit)
    rx = re.compile(pattern.value)
    return [rx.sub(lambda m: _go_expand(m, repl.value), v) for v in values if rx.search(v)]


def expand(value: str, traits: Mapping[str, Sequence[str]]) -> list[str]:
    """Expand one role value against the user's traits.

    No template → ``[value]``; a missing trait → ``[]``; several trait values →
    several results (prefix and suffix kept, duplicates and empties dropped).
    ``{{internal.jwt}}`` is returned unchanged. Malformed templates raise BadParameter.
    """
    tpl = parse_template(value)
    if tpl.expr is None:
        return [value]
    if (
        isinstance(tpl.expr, Var)
        and tpl.expr.namespace == "internal"
        and tpl.expr.name == JWT_TRAIT
    ):
        return [value]
    out = [f"{tpl.prefix}{v}{tpl.suffix}" for v in _eval(tpl.expr, traits) if v]
    return list(dict.fromkeys(out))


def expand_all(values: Sequence[str], traits: Mapping[str, Sequence[str]]) -> list[str]:
    """:func:`expand` every value; flatten and deduplicate, keeping order."""
    out: list[str] = []
    for v in values:
        out.extend(expand(v, traits))
    return list(dict.fromkeys(out))


def expand_selector(
    selector: Mapping[str, Sequence[str]], traits: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Expand label keys and values; an unresolvable key becomes ``""`` (matches nothing)."""
    out: dict[str, list[str]] = {}
    for key, values in selector.items():
        keys = expand(key, traits) or [""]
        vals = expand_all(list(values), traits)
        for k in keys:
            out[k] = list(dict.fromkeys([*out.get(k, []), *vals]))
    return out


#: Untyped (extra) condition keys holding templatable string lists.
EXTRA_LIST_KEYS = (
    "db_roles",
    "kubernetes_groups",
    "kubernetes_users",
    "windows_desktop_logins",
    "aws_role_arns",
    "azure_identities",
    "gcp_service_accounts",
    "host_groups",
    "host_sudoers",
    "desktop_groups",
)
#: Untyped (extra) condition keys holding label selectors.
EXTRA_SELECTOR_KEYS = (
    "kubernetes_labels",
    "windows_desktop_labels",
    "db_service_labels",
    "cluster_labels",
    "group_labels",
)


def _as_list(raw: Any) -> list[str] | None:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return list(raw)
    return None


def _apply_extras(cond: RoleConditions, traits: Mapping[str, Sequence[str]]) -> None:
    extra = cond.model_extra
    if not extra:
        return
    for key in EXTRA_LIST_KEYS:
        items = _as_list(extra.get(key))
        if items is not None:
            extra[key] = expand_all(items, traits)
    for key in EXTRA_SELECTOR_KEYS:
        sel = extra.get(key)
        if isinstance(sel, dict):
            norm: dict[str, list[str]] = {}
            for k, v in sel.items():
                items = _as_list(v)
                if items is None:
                    break
                norm[str(k)] = items
            else:
                extra[key] = expand_selector(norm, traits)


def _apply(cond: RoleConditions, traits: Mapping[str, Sequence[str]]) -> None:
    def expand_list(values: list[str]) -> list[str]:
        return expand_all(values, traits)

    cond.logins = expand_list(cond.logins)
    cond.db_users = expand_list(cond.db_users)
    cond.db_names = expand_list(cond.db_names)
    cond.node_labels = expand_selector(cond.node_labels, traits)
    cond.app_labels = expand_selector(cond.app_labels, traits)
    cond.db_labels = expand_selector(cond.db_labels, traits)
    if cond.impersonate is not None:
        cond.impersonate.users = expand_list(cond.impersonate.users)
        cond.impersonate.roles = expand_list(cond.impersonate.roles)
    _apply_extras(cond, traits)


def apply_traits(role: Role, traits: Mapping[str, Sequence[str]]) -> Role:
    """A copy of ``role`` with every template in ``allow`` and ``deny`` expanded.

    Covers logins, db_users, db_names, impersonate users/roles, the db/app/node label
    selectors (keys and values) and the usual untyped Teleport lists and selectors.
    """
    out = role.model_copy(deep=True)
    _apply(out.spec.allow, traits)
    _apply(out.spec.deny, traits)
    return out
