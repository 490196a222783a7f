"""The forms of the setup wizard's four steps: their widgets and reading them back."""

from __future__ import annotations

import shutil
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from jumpgate.core.client.dbsetup import OutputForm, ProxyForm, RoleForm, parse_labels, split_list

FORMATS = [("default", ""), ("tls", "tls"), ("mongo", "mongo"), ("cockroach", "cockroach")]


def _field(label: str, widget: Input | Select[str] | Checkbox) -> ComposeResult:
    yield Label(label)
    yield widget


def _value(node: DOMNode, selector: str) -> str:
    return node.query_one(selector, Input).value.strip()


def step1(bot: str) -> ComposeResult:
    """RBAC: the role and the bot that gets it."""
    with Horizontal(classes="step", id="step1"):
        with VerticalScroll(classes="form"):
            yield Static("Step 1/4. Configure RBAC", classes="step-title")
            with Grid(classes="fields"):
                yield from _field("Role name", Input("example-role", id="role-name"))
                yield from _field("DB labels", Input("*=*", id="db-labels"))
                yield from _field("DB names", Input("", placeholder="example-db", id="db-names"))
                yield from _field("DB users", Input("", placeholder="alice", id="db-users"))
                yield from _field("Bot", Input(bot, placeholder="example", id="bot-name"))
            yield Static(
                "The role is created with the admin's rights (tctl create -f role.yaml) and "
                "added to the bot (tctl bots update BOT --add-roles ROLE), or a new bot is "
                "created with it (tctl bots add).",
                classes="help",
            )
        with VerticalScroll(classes="preview"):
            yield Static("", id="preview1", markup=False)


def read_role(node: DOMNode) -> tuple[RoleForm, str]:
    """The role form and the bot name (``BadParameter`` on malformed labels)."""
    form = RoleForm(
        name=_value(node, "#role-name"),
        db_labels=parse_labels(_value(node, "#db-labels")),
        db_names=split_list(_value(node, "#db-names")),
        db_users=split_list(_value(node, "#db-users")),
    )
    return form, _value(node, "#bot-name")


def step2(config: str, proxy: str) -> ComposeResult:
    """The tbot ``database`` output (and, for a new config, how the bot joins)."""
    with Horizontal(classes="step", id="step2"):
        with VerticalScroll(classes="form"):
            yield Static("Step 2/4. Configure a database tbot output", classes="step-title")
            with Grid(classes="fields"):
                yield from _field("Service", Input("", placeholder="example-server", id="service"))
                yield from _field("Database", Input("", placeholder="example-db", id="database"))
                yield from _field("Username", Input("", placeholder="alice", id="username"))
                yield from _field(
                    "Format", Select(FORMATS, value="", allow_blank=False, id="format")
                )
                yield from _field("Destination", Input("/opt/machine-id", id="destination"))
                yield from _field("tbot.yaml", Input(config or "/etc/tbot.yaml", id="config-path"))
            yield Static(
                "For a new tbot.yaml (none at that path yet):", classes="help", id="new-help"
            )
            with Grid(classes="fields", id="new-config"):
                yield from _field("Proxy server", Input(proxy, id="proxy-server"))
                yield from _field("Join token", Input("", id="token", password=True))
                yield from _field("CA pin", Input("", id="ca-pin"))
                yield from _field("Storage", Input("/var/lib/teleport/bot", id="storage"))
            yield Checkbox(
                "Run tbot once now (tbot start --oneshot) to write the credentials",
                True,
                id="run-once",
            )
        with VerticalScroll(classes="preview"):
            yield Static("", id="preview2", markup=False)


def read_output(node: DOMNode) -> OutputForm:
    """The output form."""
    fmt = node.query_one("#format", Select).value
    return OutputForm(
        service=_value(node, "#service"),
        database=_value(node, "#database"),
        username=_value(node, "#username"),
        format=fmt if isinstance(fmt, str) else "",
        destination=_value(node, "#destination"),
        config_path=_value(node, "#config-path"),
        proxy_server=_value(node, "#proxy-server"),
        token=_value(node, "#token"),
        ca_pin=_value(node, "#ca-pin"),
        storage=_value(node, "#storage"),
    )


def step3() -> ComposeResult:
    """The local proxy: a systemd unit and/or a proxy started now."""
    tbot = shutil.which("tbot")
    with Horizontal(classes="step", id="step3"):
        with VerticalScroll(classes="form"):
            yield Static(
                "Step 3/4. Configure the local database access proxy", classes="step-title"
            )
            with Grid(classes="fields"):
                yield from _field("Port", Input("12345", id="port", type="integer"))
                yield from _field("Mode", Checkbox("Authenticated tunnel (--tunnel)", id="tunnel"))
                yield from _field(
                    "Unit file", Input("/etc/systemd/system/tbot-db-proxy.service", id="unit-path")
                )
                yield from _field("User", Input("teleport", id="unit-user"))
                yield from _field("Group", Input("teleport", id="unit-group"))
                yield from _field(
                    "tbot path",
                    Input(
                        str(Path(tbot).absolute()) if tbot else "/usr/local/bin/tbot",
                        id="tbot-path",
                    ),
                )
            yield Checkbox("Write the unit file", True, id="write-unit")
            yield Checkbox("Start the local proxy now (inside the dashboard)", True, id="start-now")
        with VerticalScroll(classes="preview"):
            yield Static("", id="preview3", markup=False)


def read_proxy(node: DOMNode) -> ProxyForm:
    """The proxy form."""
    raw = _value(node, "#port")
    return ProxyForm(
        port=int(raw) if raw.isdigit() else 0,
        tunnel=node.query_one("#tunnel", Checkbox).value,
        unit_path=_value(node, "#unit-path"),
        user=_value(node, "#unit-user") or "teleport",
        group=_value(node, "#unit-group") or "teleport",
        tbot_path=_value(node, "#tbot-path") or "/usr/local/bin/tbot",
    )


def step4() -> ComposeResult:
    """The client: snippets with the real paths, and a test connection."""
    with Vertical(classes="step", id="step4"):
        yield Static(
            "Step 4/4. Configure the client to connect to the database", classes="step-title"
        )
        with Horizontal(id="test-row"):
            yield Button("Test connection", id="test", variant="success")
            yield Static("", id="test-result", markup=False)
        with VerticalScroll(classes="preview"):
            yield Static("", id="preview4", markup=False)
