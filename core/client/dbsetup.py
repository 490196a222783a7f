"""The four steps of machine database access (seed guide "Machine ID with Database Access").

Pure functions that build, validate and write what each step needs; the
dashboard's setup wizard previews their output and calls the ``apply_*`` /
``write_*`` functions only after the user confirms:

1. RBAC: :class:`RoleForm` → :func:`role_yaml` (the seed's role), created with
   ``resources.create`` and given to the bot (``bots.update --add-roles``, or
   ``bots.add`` for a new bot) by :func:`apply_role`;
2. the tbot ``database`` output: :class:`OutputForm` → :func:`tbot_yaml` (added to
   an existing config, or a new one that joins with the bot's token);
   :func:`write_config` re-reads the file when it writes, so it never replaces a
   file it has not read;
3. the local proxy: :func:`proxy_unit` (the seed's ``tbot-db-proxy.service``), whose
   ``--proxy`` comes from :func:`config_proxy` (or the tsh profile);
4. the client: :mod:`jumpgate.core.client.snippets` and
   :func:`jumpgate.core.client.pgquery.run_query`.

Every file is written with :func:`jumpgate.core.fsutil.atomic_write`.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jumpgate.core.errors import BadParameter, JumpgateError
from jumpgate.core.fsutil import atomic_write

if TYPE_CHECKING:
    from jumpgate.core.auth.client import AuthClient
    from jumpgate.core.bot.config import BotConfig

_PLAIN = re.compile(r"^[A-Za-z0-9_.@/-]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")


def _flow_item(value: str) -> str:
    return value if _PLAIN.match(value) else "'" + value.replace("'", "''") + "'"


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def split_list(text: str) -> list[str]:
    """``"a, b c"`` → ``["a", "b", "c"]`` (commas or spaces)."""
    return [p for p in re.split(r"[,\s]+", text.strip()) if p]


def parse_labels(text: str) -> dict[str, str]:
    """``"env=dev, team=a"`` or ``"*=*"`` → a label selector; ``BadParameter`` on bad input."""
    out: dict[str, str] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadParameter(
                f"invalid label {part!r}", hint="write key=value pairs, e.g. env=dev or *=*"
            )
        out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- step 1: RBAC
@dataclass
class RoleForm:
    """The role of step 1."""

    name: str = "example-role"
    db_labels: dict[str, str] = field(default_factory=lambda: {"*": "*"})
    db_names: list[str] = field(default_factory=list)
    db_users: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """What is missing or invalid (empty when the form is complete)."""
        out = []
        if not self.name or not _NAME.match(self.name):
            out.append("role name: letters, digits, '-', '_', '.' and '@' only")
        if not self.db_labels:
            out.append("db labels: give at least one selector, e.g. *=*")
        if not self.db_names:
            out.append("db names: give the database name(s) the bot may open")
        if not self.db_users:
            out.append("db users: give the database user(s) the bot may log in as")
        return out


def role_yaml(form: RoleForm) -> str:
    """The role in the seed guide's layout."""
    labels = "\n".join(f"      {_quoted(k)}: {_quoted(v)}" for k, v in form.db_labels.items())
    names = ", ".join(_flow_item(n) for n in form.db_names)
    users = ", ".join(_flow_item(u) for u in form.db_users)
    return (
        "kind: role\n"
        "version: v6\n"
        "metadata:\n"
        f"  name: {_flow_item(form.name)}\n"
        "spec:\n"
        "  allow:\n"
        "    db_labels:\n"
        f"{labels}\n"
        f"    db_names: [{names}]\n"
        f"    db_users: [{users}]\n"
        "    rules:\n"
        "      - resources: [db_server, db]\n"
        "        verbs: [read, list]\n"
    )


def validate_role(form: RoleForm) -> str:
    """The role YAML after checking the form and parsing the YAML as the auth service will."""
    from jumpgate.core.resources import parse_documents

    problems = form.problems()
    if problems:
        raise BadParameter(problems[0], hint="; ".join(problems[1:]) or None)
    text = role_yaml(form)
    parse_documents(text, "role.yaml")
    return text


@dataclass(frozen=True)
class RoleApplied:
    """What step 1 did on the cluster."""

    role_action: str
    bot: str
    bot_created: bool
    #: The join token of a new bot ("" when the bot existed)
    token: str = ""
    ca_pin: str = ""
    proxy_addr: str = ""


def bot_exists(client: AuthClient, name: str) -> bool:
    """Whether a bot called ``name`` exists (``bots.list``)."""
    bots = client.call("bots.list") or []
    return any((b.get("metadata") or {}).get("name") == name for b in bots)


def apply_role(client: AuthClient, form: RoleForm, bot: str) -> RoleApplied:
    """``tctl create -f role.yaml`` then ``tctl bots update BOT --add-roles ROLE`` (or ``bots add``)."""
    from jumpgate.core.resources import parse_documents, resource_to_dict

    if not bot or not _NAME.match(bot):
        raise BadParameter(
            f"invalid bot name {bot!r}", hint="letters, digits, '-', '_' and '.' only"
        )
    text = validate_role(form)
    resources = parse_documents(text, "role.yaml")
    done = client.call(
        "resources.create",
        resources=[resource_to_dict(r, with_secrets=True) for r in resources],
        force=True,
    )
    action = str(done[0]["action"]) if done else "created"
    pin = ""
    try:
        pin = str(client.call("status").get("ca_pin") or "")
    except JumpgateError:
        pin = ""
    if bot_exists(client, bot):
        client.call("bots.update", name=bot, add_roles=[form.name])
        return RoleApplied(action, bot, False, ca_pin=pin)
    created = client.call("bots.add", name=bot, roles=[form.name])
    return RoleApplied(
        action,
        bot,
        True,
        token=str(created.get("token_id") or ""),
        ca_pin=pin or next(iter(created.get("ca_pins") or []), ""),
        proxy_addr=str(created.get("proxy_addr") or ""),
    )


# --------------------------------------------------------------------------- step 2: tbot output
@dataclass
class OutputForm:
    """The ``database`` output of step 2 and, for a new config, how the bot joins."""

    service: str = ""
    database: str = ""
    username: str = ""
    format: str = ""
    destination: str = "/opt/machine-id"
    config_path: str = "/etc/tbot.yaml"
    #: Only for a new config:
    proxy_server: str = ""
    token: str = ""
    ca_pin: str = ""
    storage: str = "/var/lib/teleport/bot"

    def problems(self, *, new_config: bool) -> list[str]:
        """What is missing or invalid."""
        from jumpgate.core.bot.config_outputs import DB_FORMATS

        out = []
        if not self.service:
            out.append("service: the database's name in the cluster (tsh db ls)")
        if not self.database:
            out.append("database: the database name on the server")
        if self.format not in DB_FORMATS:
            out.append(f"format: one of {', '.join(f or '(default)' for f in DB_FORMATS)}")
        if not self.destination or not Path(self.destination).is_absolute():
            out.append("destination: an absolute directory path")
        if not self.config_path:
            out.append("config path: where to write tbot.yaml")
        if new_config:
            if not self.proxy_server:
                out.append("proxy server: the proxy's address, HOST:PORT")
            if not self.token:
                out.append("join token: create the bot in step 1, or paste a bot join token")
            if not self.storage or not Path(self.storage).is_absolute():
                out.append("storage: an absolute directory path")
        return out


def output_dict(form: OutputForm) -> dict[str, Any]:
    """The ``services:`` entry of the seed guide."""
    out: dict[str, Any] = {
        "type": "database",
        "destination": {"type": "directory", "path": form.destination},
        "service": form.service,
        "database": form.database,
    }
    if form.username:
        out["username"] = form.username
    if form.format:
        out["format"] = form.format
    return out


def tbot_yaml(form: OutputForm, existing: str | None) -> str:
    """``existing`` (a tbot.yaml) with the output added to ``services:``, or a new config."""
    from jumpgate.core.yamlutil import dump, load_one

    if existing is not None and existing.strip():
        doc, _ = load_one(existing, form.config_path)
        if not isinstance(doc, dict):
            raise BadParameter(f"{form.config_path} is not a YAML mapping")
        services = doc.get("services")
        if services is None:
            services = doc["services"] = []
        if not isinstance(services, list):
            raise BadParameter(f"{form.config_path}: services must be a list")
        services[:] = [
            s
            for s in services
            if not (
                isinstance(s, dict)
                and s.get("type") == "database"
                and (s.get("destination") or {}).get("path") == form.destination
            )
        ]
        services.append(output_dict(form))
        return dump(doc)
    doc = {
        "version": "v2",
        "proxy_server": form.proxy_server,
        "onboarding": {"join_method": "token", "token": form.token},
        "storage": {"type": "directory", "path": form.storage},
        "services": [output_dict(form)],
    }
    if form.ca_pin:
        doc["onboarding"]["ca_pins"] = [form.ca_pin]
    return dump(doc)


def validate_tbot_yaml(text: str, source: str) -> BotConfig:
    """Parse ``text`` as ``tbot start`` will (``ConfigError`` with the line on problems)."""
    from jumpgate.core.bot.config import parse_config

    return parse_config(text, source)


# --------------------------------------------------------------------------- step 3: local proxy
@dataclass
class ProxyForm:
    """The local proxy of step 3."""

    port: int = 12345
    tunnel: bool = False
    unit_path: str = "/etc/systemd/system/tbot-db-proxy.service"
    user: str = "teleport"
    group: str = "teleport"
    tbot_path: str = "/usr/local/bin/tbot"

    def problems(self) -> list[str]:
        """What is invalid."""
        out = []
        if not 0 < self.port < 65536:
            out.append("port: a TCP port between 1 and 65535")
        if self.unit_path and not self.unit_path.endswith(".service"):
            out.append("unit file: the name must end in .service")
        return out


def proxy_unit(form: ProxyForm, *, config: str, proxy: str, destination: str, service: str) -> str:
    """The seed guide's ``tbot-db-proxy.service`` for these values."""
    tunnel = " --tunnel" if form.tunnel else ""
    name = Path(form.unit_path).stem if form.unit_path else "tbot-db-proxy"
    return f"""[Unit]
Description=Teleport Machine & Workload Identity Proxy Service
After=network.target
# If you have followed a previous guide and configured tbot itself as a systemd
# service, uncomment the following line to create a dependency between the two
# services.
# Requires=tbot.service

[Service]
Type=simple
# Ensure that the teleport user/group exists and has read access to the
# destination directory.
User={form.user}
Group={form.group}
Restart=always
RestartSec=5
ExecStart={form.tbot_path} -c {config} proxy --proxy={proxy} --destination-dir={destination} db --port={form.port}{tunnel} {service}
ExecReload=/bin/kill -HUP $MAINPID
PIDFile=/run/{name}.pid
LimitNOFILE=8192

[Install]
WantedBy=multi-user.target
"""


# --------------------------------------------------------------------------- reading and writing
def read_config(path: str) -> str | None:
    """The text of the tbot.yaml at ``path``; None when there is no file there.

    ``BadParameter`` when a file is there but cannot be read: the wizard must not
    replace what it could not read.
    """
    if not path:
        return None
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise BadParameter(
            f"{path} is a directory", hint="give the path of the tbot.yaml file"
        ) from None
    except PermissionError:
        raise BadParameter(
            f"cannot read {path}: permission denied",
            hint="run the dashboard as a user who can read it (e.g. root), or choose another path",
        ) from None
    except UnicodeDecodeError:
        raise BadParameter(
            f"{path} is not a text file", hint="give the path of a tbot.yaml"
        ) from None
    except OSError as exc:
        raise BadParameter(f"cannot read {path}: {exc.strerror or exc}") from None


def config_proxy(path: str) -> str:
    """The proxy address the tbot.yaml at ``path`` joins through ("" when none or unreadable)."""
    try:
        text = read_config(path)
        return validate_tbot_yaml(text, path).address if text and text.strip() else ""
    except JumpgateError:
        return ""


def write_config(form: OutputForm) -> str:
    """Add the output to ``form.config_path`` as that file is *now*, or write a new config.

    The file is read again here, right before the write, so whatever changed since
    the wizard showed its preview (another output added, the file created or removed)
    is merged rather than replaced; the write is atomic (temp file + rename, through
    a symlink to its target) and keeps the file's mode (0600 for a new file).
    Returns the text written.
    """
    path = form.config_path
    for _ in range(3):
        current = read_config(path)
        new = current is None or not current.strip()
        problems = form.problems(new_config=new)
        if problems:
            raise BadParameter(
                f"{path} changed meanwhile: {problems[0]}",
                hint="review step 2 and press Next again",
            )
        text = tbot_yaml(form, current)
        validate_tbot_yaml(text, path)
        if read_config(path) != current:
            continue  # changed while we merged: merge into the newer text
        if current is None and Path(path).is_symlink():
            # a dangling link: following it could create any file the link names (the
            # dashboard may run as root); replacing it would drop what the user set up
            raise BadParameter(
                f"{path} is a symbolic link to {Path(path).readlink()}, which does not exist",
                hint="create the file it points to (it may be empty), or remove the link",
            )
        target = Path(os.path.realpath(path))  # through a symlink to its target
        mode, owner = 0o600, None
        if current is not None:
            # the file keeps its mode and owner: tbot may run as its own user and
            # must still read its config after the dashboard (as root) rewrote it
            try:
                st = target.stat()
                mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            except OSError:
                pass
        try:
            # a new file never replaces one created since it was found missing
            write_text(target, text, mode=mode, owner=owner, replace=current is not None)
        except FileExistsError:
            continue  # created meanwhile: merge into it
        return text
    raise BadParameter(f"{path} keeps changing", hint="try again once nothing else writes it")


def write_text(
    path: str | Path,
    text: str,
    *,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
    replace: bool = True,
) -> Path:
    """Write ``text`` atomically (temp file + rename), creating missing parent directories.

    ``owner`` (uid, gid): who the file should belong to (best effort; see ``atomic_write``).
    ``replace=False``: ``FileExistsError`` rather than replace a file that is there.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_write(p, exc) from None
    try:
        atomic_write(p, text, mode=mode, owner=owner, replace=replace)
    except OSError as exc:
        if isinstance(exc, FileExistsError) and not replace:
            raise  # the caller reads what is there now and merges into it
        raise _cannot_write(p, exc) from None
    return p


def _cannot_write(p: Path, exc: OSError) -> BadParameter:
    if isinstance(exc, PermissionError):
        return BadParameter(
            f"cannot write {p}: permission denied",
            hint="choose a path you can write, or run the dashboard as a user who can (e.g. root)",
        )
    return BadParameter(f"cannot write {p}: {exc.strerror or exc}")
