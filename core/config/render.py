"""Writing configuration: ``teleport configure``, ``teleport db configure create``,
``teleport install systemd`` and their shared ``-o/--output`` handling.

Every renderer returns YAML (or unit-file) text with keys in the order Teleport
writes them; the YAML loads back through :func:`~jumpgate.core.config.parse_config`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from jumpgate.core.errors import BadParameter, ConfigError
from jumpgate.core.fsutil import atomic_write
from jumpgate.core.yamlutil import dump

from ._common import (
    DB_PROTOCOLS,
    dns_label_error,
    join_hostport,
    parse_hostport,
)
from .teleport import DEFAULT_CONFIG_PATH, DEFAULT_DATA_DIR, WEB_PORT

_SECOND_FACTORS = ("off", "otp", "webauthn", "on", "optional")


def _log_section() -> dict[str, Any]:
    return {"output": "stderr", "severity": "INFO", "format": {"output": "text"}}


def _check_addr(value: str, flag: str, default_port: int) -> tuple[str, int]:
    try:
        return parse_hostport(value, default_port)
    except BadParameter as exc:
        raise BadParameter(f"{flag}: {exc.message}", hint=exc.hint) from None


def render_teleport_configure(
    *,
    cluster_name: str,
    public_addr: str | None,
    data_dir: str = DEFAULT_DATA_DIR,
    nodename: str | None,
    web_listen_addr: str = "0.0.0.0:3080",
    auth_listen_addr: str = "0.0.0.0:3025",
    second_factor: str = "off",
) -> str:
    """``teleport configure``: a v3 all-in-one (auth + proxy) configuration.

    ``public_addr`` defaults to ``<nodename>:3080``; ``nodename`` to the host name.
    """
    if not cluster_name.strip():
        raise BadParameter("--cluster-name must not be empty", hint="--cluster-name=example.com")
    if second_factor not in _SECOND_FACTORS:
        raise BadParameter(
            f"second factor {second_factor!r} is not one of {', '.join(_SECOND_FACTORS)}"
        )
    node = nodename or socket.gethostname()
    _check_addr(web_listen_addr, "--web-listen-addr", WEB_PORT)
    _check_addr(auth_listen_addr, "--auth-listen-addr", 3025)
    public = public_addr or f"{node}:{WEB_PORT}"
    _check_addr(public, "--public-addr", WEB_PORT)
    doc: dict[str, Any] = {
        "version": "v3",
        "teleport": {
            "nodename": node,
            "data_dir": data_dir,
            "log": _log_section(),
            "ca_pin": "",
        },
        "auth_service": {
            "enabled": "yes",
            "listen_addr": auth_listen_addr,
            "cluster_name": cluster_name,
            "proxy_listener_mode": "multiplex",
            "authentication": {"second_factor": second_factor},
        },
        "ssh_service": {"enabled": "no"},
        "proxy_service": {
            "enabled": "yes",
            "web_listen_addr": web_listen_addr,
            "public_addr": public,
            "https_keypairs": [],
            "https_keypairs_reload_interval": "0s",
            "acme": {},
        },
    }
    text: str = dump(doc)
    return text


def parse_labels(spec: str, *, flag: str = "--labels") -> dict[str, str]:
    """``"env=dev,team=a"`` → ``{"env": "dev", "team": "a"}`` (empty string → ``{}``)."""
    out: dict[str, str] = {}
    hint = f"write labels as key=value pairs separated by commas: {flag}=env=dev,team=a"
    for part in spec.split(","):
        item = part.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise BadParameter(f'{flag}: "{item}" is not a key=value pair', hint=hint)
        if not key:
            raise BadParameter(f'{flag}: "{item}" has an empty key', hint=hint)
        if key in out:
            raise BadParameter(f'{flag}: label "{key}" is given twice', hint=hint)
        out[key] = value
    return out


def render_db_configure(
    *,
    proxy: str,
    token: str,
    name: str,
    protocol: str,
    uri: str,
    labels: dict[str, str],
    ca_cert_file: str | None,
    trust_system_cert_pool: bool,
    ca_pins: list[str],
    data_dir: str = DEFAULT_DATA_DIR,
    nodename: str | None,
    description: str = "",
) -> str:
    """``teleport db configure create``: a v3 Database Service agent configuration.

    ``proxy`` gets port 3080 when it has none; ``token`` is written as given (a
    value, or the path of a file holding it).
    """
    host, port = _check_addr(proxy, "--proxy", WEB_PORT)
    if not token.strip():
        raise BadParameter("--token must not be empty", hint="--token=/tmp/token (file or value)")
    err = dns_label_error(name)
    if err:
        raise BadParameter(f"--name: database {err}", hint="--name=example-postgres")
    if protocol not in DB_PROTOCOLS:
        raise BadParameter(
            f"--protocol: unknown database protocol {protocol!r}",
            hint=f"use one of: {', '.join(DB_PROTOCOLS)}",
        )
    if not uri.strip():
        raise BadParameter("--uri is required", hint="--uri=postgres.example.com:5432")
    for key in labels:
        if not key.strip():
            raise BadParameter("--labels: a label has an empty key", hint="--labels=env=dev")

    teleport: dict[str, Any] = {
        "nodename": nodename or socket.gethostname(),
        "data_dir": data_dir,
        "proxy_server": join_hostport(host, port),
        "join_params": {"token_name": token, "method": "token"},
    }
    pins = [p.strip() for p in ca_pins if p.strip()]
    if pins:
        teleport["ca_pin"] = pins
    teleport["log"] = _log_section()

    db: dict[str, Any] = {"name": name}
    if description:
        db["description"] = description
    db.update({"protocol": protocol, "uri": uri})
    if labels:
        db["static_labels"] = dict(labels)
    tls: dict[str, Any] = {}
    if ca_cert_file:
        tls["ca_cert_file"] = ca_cert_file
    if trust_system_cert_pool:
        tls["trust_system_cert_pool"] = True
    if tls:
        db["tls"] = tls

    doc: dict[str, Any] = {
        "version": "v3",
        "teleport": teleport,
        "auth_service": {"enabled": "no"},
        "ssh_service": {"enabled": "no"},
        "proxy_service": {"enabled": "no"},
        "db_service": {"enabled": "yes", "databases": [db]},
    }
    text: str = dump(doc)
    return text


def render_systemd_unit(
    *,
    config_path: str = DEFAULT_CONFIG_PATH,
    teleport_binary: str = "/usr/local/bin/teleport",
    pid_file: str = "/run/teleport.pid",
) -> str:
    """``teleport install systemd``: the unit file Teleport ships."""
    return (
        "[Unit]\n"
        "Description=Teleport Service\n"
        "After=network.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "Restart=on-failure\n"
        "EnvironmentFile=-/etc/default/teleport\n"
        f"ExecStart={teleport_binary} start --config {config_path} --pid-file={pid_file}\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        f"PIDFile={pid_file}\n"
        "LimitNOFILE=524288\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def write_output(text: str, output: str, *, default_path: str = DEFAULT_CONFIG_PATH) -> str | None:
    """Teleport's ``-o/--output``.

    ``stdout`` → nothing is written and ``text`` is returned for the caller to print;
    ``file`` → ``default_path``; ``file:///abs/path`` → that path. Files are written
    atomically with mode 0600, replacing an existing file; the path written is returned.
    """
    if output == "stdout":
        return text
    if output == "file":
        target = Path(default_path)
    elif output.startswith("file://"):
        target = Path(output[len("file://") :])
        if not target.is_absolute() or target.name == "":
            raise BadParameter(
                f"--output: {output!r} does not name an absolute file path",
                hint="use three slashes: file:///etc/teleport.yaml",
            )
    else:
        raise BadParameter(
            '--output must be "stdout", "file" or "file:///path"',
            hint="for example -o file:///etc/teleport.yaml",
        )
    if target.is_dir():
        raise ConfigError(f"{target} is a directory", hint="name a file, not a directory")
    try:
        atomic_write(target, text, mode=0o600)
    except FileNotFoundError:
        raise ConfigError(
            f"{target}: directory {target.parent} does not exist",
            hint=f"create it first: mkdir -p {target.parent}",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{target}: permission denied", hint="run the command with sudo"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write: {exc.strerror or exc}") from None
    return str(target)
