"""The tbot configuration file (``version: v2``) and the ``tbot start`` flags that override it.

Keys and defaults follow Teleport's BotConfig (TELEPORT-REFERENCE §1.1): unknown
keys are errors naming the key and its line; ``outputs:`` and ``services:`` are
both accepted and merged; ``certificate_ttl`` and ``credential_ttl`` are the
same setting. Problems that do not stop the bot (a TTL shorter than the renewal
interval) come back as ``warnings``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

from jumpgate.core.bot._parse import Section, error_at
from jumpgate.core.bot.config_outputs import (
    AnyOutput,
    DestinationConfig,
    DirectoryConfig,
    IdentityOutputConfig,
    MemoryConfig,
    destination_from_uri,
    parse_destination,
    parse_output,
)
from jumpgate.core.durations import humanize
from jumpgate.core.errors import BadParameter, ConfigError
from jumpgate.core.yamlutil import Locator, load_one

log = logging.getLogger(__name__)

DEFAULT_CERTIFICATE_TTL = timedelta(hours=1)
DEFAULT_RENEWAL_INTERVAL = timedelta(minutes=20)
#: The auth service caps renewable certificates at this TTL (defaults.MaxRenewableCertTTL).
MAX_RENEWABLE_CERT_TTL = timedelta(hours=24)
DEFAULT_STORAGE_PATH = "/var/lib/teleport/bot"

#: Join methods Teleport's tbot knows (SupportedJoinMethods); Jumpgate implements ``token``.
TELEPORT_JOIN_METHODS = (
    "azure",
    "azure_devops",
    "bitbucket",
    "circleci",
    "gcp",
    "github",
    "gitlab",
    "iam",
    "kubernetes",
    "spacelift",
    "token",
    "tpm",
    "terraform_cloud",
    "bound_keypair",
)

_TOP_KEYS = (
    "version",
    "onboarding",
    "storage",
    "outputs",
    "services",
    "debug",
    "auth_server",
    "proxy_server",
    "certificate_ttl",
    "credential_ttl",
    "renewal_interval",
    "oneshot",
    "fips",
    "diag_addr",
    "insecure",
)
_TOP_HINTS = {
    "destinations": "destinations is a v1 key: in v2 write outputs: - type: identity, destination: {...}",
}


@dataclass
class OnboardingConfig:
    """``onboarding:``: how the bot joins the first time."""

    join_method: str = "token"
    #: The token itself, or an absolute path to a file holding it (read by :meth:`token_value`).
    token: str = ""
    ca_pins: list[str] = field(default_factory=list)
    ca_path: str = ""

    def token_value(self) -> str:
        """The join token, read from the file when ``token`` is an absolute path."""
        if not self.token:
            return ""
        if not Path(self.token).is_absolute():
            return self.token
        try:
            value = Path(self.token).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(
                f"onboarding.token: the token file {self.token} does not exist",
                hint="write the token into that file, or give the token itself",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"onboarding.token: cannot read {self.token}: {exc}") from None
        if not value:
            raise ConfigError(f"onboarding.token: the token file {self.token} is empty")
        return value


@dataclass
class BotConfig:
    """A parsed tbot configuration."""

    version: str = "v2"
    auth_server: str = ""
    proxy_server: str = ""
    onboarding: OnboardingConfig = field(default_factory=OnboardingConfig)
    storage: DestinationConfig = field(
        default_factory=lambda: DirectoryConfig(path=DEFAULT_STORAGE_PATH)
    )
    outputs: list[AnyOutput] = field(default_factory=list)
    certificate_ttl: timedelta = DEFAULT_CERTIFICATE_TTL
    renewal_interval: timedelta = DEFAULT_RENEWAL_INTERVAL
    oneshot: bool = False
    debug: bool = False
    diag_addr: str = ""
    insecure: bool = False
    #: The file it came from ("" for flags only).
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The address to join and renew through: proxy_server, else auth_server."""
        return self.proxy_server or self.auth_server

    def lifetime_warnings(self) -> list[str]:
        """Warnings about the TTL and the renewal interval (Teleport's CredentialLifetime.Validate)."""
        out = []
        if self.certificate_ttl < self.renewal_interval and not self.oneshot:
            out.append(
                f"Credential TTL ({humanize(self.certificate_ttl)}) is shorter than the renewal "
                f"interval ({humanize(self.renewal_interval)}): certificates will expire before "
                "they are renewed; raise certificate_ttl or lower renewal_interval"
            )
        if self.certificate_ttl > MAX_RENEWABLE_CERT_TTL:
            out.append(
                "Requested certificate TTL exceeds the maximum TTL allowed and will likely be "
                f"reduced by the Teleport server (max {humanize(MAX_RENEWABLE_CERT_TTL)})"
            )
        return out


def _onboarding(sec: Section | None) -> OnboardingConfig:
    if sec is None:
        return OnboardingConfig()
    sec.check_keys(("join_method", "token", "ca_pins", "ca_path"))
    ob = OnboardingConfig(
        join_method=sec.text("join_method", "token"),
        token=sec.text("token"),
        ca_pins=sec.strings("ca_pins"),
        ca_path=sec.text("ca_path"),
    )
    try:
        check_join_method(ob.join_method)
    except BadParameter as exc:
        raise sec.error("join_method", exc.message, exc.hint) from None
    if ob.ca_pins and ob.ca_path:
        raise sec.error("ca_path", "the options ca-pin and ca-path are mutually exclusive")
    return ob


def check_join_method(method: str) -> None:
    """Only ``token`` is implemented; other Teleport methods get a clear error."""
    if method == "token":
        return
    if method in TELEPORT_JOIN_METHODS:
        raise BadParameter(
            f"join method {method!r} is not supported by Jumpgate's tbot",
            hint="use join_method: token with a token from tctl bots add",
        )
    raise BadParameter(f"unknown join method {method!r}", hint="the supported join method is token")


def _storage(sec: Section) -> DestinationConfig:
    st = sec.section("storage")
    if st is None:
        return DirectoryConfig(path=DEFAULT_STORAGE_PATH)
    if "destination" in st.data:
        st.check_keys(("destination",))
        return parse_destination(st, "destination")
    return parse_destination(sec, "storage")


def parse_config(text: str, source: str = "<config>") -> BotConfig:
    """Parse the YAML text of a tbot config; raise :class:`ConfigError` with file and line."""
    data, loc = load_one(text, source)
    return _parse(data, loc, source)


def load_config(path: str | Path) -> BotConfig:
    """Read and parse a tbot config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"the tbot config {p} does not exist", hint="create it, or pass flags instead of -c"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the tbot config {p}: {exc}") from None
    return parse_config(text, str(p))


def _parse(data: dict[str, object], loc: Locator, source: str) -> BotConfig:
    sec = Section(data, (), loc)
    sec.check_keys(_TOP_KEYS, hints=_TOP_HINTS)
    warnings: list[str] = []
    version = sec.text("version")
    if not version:
        warnings.append(f"{source}: no version given; reading it as version: v2")
    elif version in ("v1",):
        raise sec.error(
            "version", "v1 configs are not supported", "convert it to version: v2 (outputs: ...)"
        )
    elif version != "v2":
        raise sec.error("version", f"unknown config version {version!r}", "use version: v2")
    if sec.has("auth_server") and sec.has("proxy_server"):
        raise sec.error("proxy_server", "auth_server and proxy_server are mutually exclusive")
    if sec.flag("fips"):
        raise sec.error("fips", "FIPS mode is not supported by Jumpgate's tbot")
    ttl_key = "credential_ttl" if sec.has("credential_ttl") else "certificate_ttl"
    if sec.has("credential_ttl") and sec.has("certificate_ttl"):
        raise sec.error("certificate_ttl", "give credential_ttl or certificate_ttl, not both")
    cfg = BotConfig(
        version="v2",
        auth_server=sec.text("auth_server"),
        proxy_server=sec.text("proxy_server"),
        onboarding=_onboarding(sec.section("onboarding")),
        storage=_storage(sec),
        outputs=[parse_output(o) for key in ("outputs", "services") for o in sec.sections(key)],
        certificate_ttl=sec.duration(ttl_key) or DEFAULT_CERTIFICATE_TTL,
        renewal_interval=sec.duration("renewal_interval") or DEFAULT_RENEWAL_INTERVAL,
        oneshot=sec.flag("oneshot"),
        debug=sec.flag("debug"),
        diag_addr=sec.text("diag_addr"),
        insecure=sec.flag("insecure"),
        source=source,
    )
    if cfg.insecure and cfg.onboarding.ca_pins:
        raise sec.error("insecure", "the option ca-pin is mutually exclusive with --insecure")
    problem = addr_problem(cfg.diag_addr) if cfg.diag_addr else None
    if problem:
        raise error_at(loc, ("diag_addr",), problem, "use HOST:PORT, e.g. 127.0.0.1:3001")
    warnings += cfg.lifetime_warnings()
    warnings += duplicate_destination_warnings(cfg)
    cfg.warnings = warnings
    return cfg


def addr_problem(addr: str) -> str | None:
    """Why ``addr`` is not a ``HOST:PORT`` listen address (None when it is)."""
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return f"invalid address {addr!r}: expected HOST:PORT"
    if not host.strip("[]"):
        return f"invalid address {addr!r}: the host is missing"
    return None


def duplicate_destination_warnings(cfg: BotConfig) -> list[str]:
    """Teleport logs "Identical destinations used within config" for shared directories."""
    seen: dict[str, str] = {}
    if isinstance(cfg.storage, DirectoryConfig):
        seen[str(Path(cfg.storage.path))] = "storage"
    out = []
    for o in cfg.outputs:
        if isinstance(o.destination, DirectoryConfig):
            key = str(Path(o.destination.path))
            if key in seen:
                out.append(
                    f"Identical destinations used within config: {key} is used by {seen[key]} "
                    f"and by the {o.type} output; files may overwrite each other"
                )
            seen.setdefault(key, f"the {o.type} output")
    return out


# --------------------------------------------------------------------- CLI overrides
@dataclass
class CLIOverrides:
    """``tbot start`` flags; empty/None values leave the file's value alone."""

    data_dir: str = ""
    destination_dir: str = ""
    token: str = ""
    ca_pins: list[str] = field(default_factory=list)
    join_method: str = ""
    auth_server: str = ""
    proxy_server: str = ""
    certificate_ttl: timedelta | None = None
    renewal_interval: timedelta | None = None
    oneshot: bool = False
    diag_addr: str = ""
    debug: bool = False


def apply_overrides(cfg: BotConfig, cli: CLIOverrides) -> BotConfig:
    """A copy of ``cfg`` with the flags applied; logs "CLI parameters are overriding configuration".

    As in Teleport: ``--destination-dir`` replaces every output with one
    ``identity`` output; any of ``--token``/``--join-method``/``--ca-pin``
    replaces the whole ``onboarding`` section.
    """
    out = replace(cfg, warnings=list(cfg.warnings))
    changed: list[str] = []
    if cli.auth_server and cli.proxy_server:
        raise BadParameter("--auth-server and --proxy-server are mutually exclusive")
    if cli.auth_server:
        out.auth_server, out.proxy_server = cli.auth_server, ""
        changed.append("auth_server")
    if cli.proxy_server:
        out.proxy_server, out.auth_server = cli.proxy_server, ""
        changed.append("proxy_server")
    if cli.data_dir:
        out.storage = destination_from_uri(cli.data_dir)
        changed.append("storage")
    if cli.destination_dir:
        out.outputs = [IdentityOutputConfig(destination=destination_from_uri(cli.destination_dir))]
        changed.append("outputs")
    if cli.token or cli.join_method or cli.ca_pins:
        check_join_method(cli.join_method or "token")
        out.onboarding = OnboardingConfig(
            join_method=cli.join_method or "token", token=cli.token, ca_pins=list(cli.ca_pins)
        )
        changed.append("onboarding")
    if cli.certificate_ttl is not None:
        out.certificate_ttl = cli.certificate_ttl
        changed.append("certificate_ttl")
    if cli.renewal_interval is not None:
        out.renewal_interval = cli.renewal_interval
        changed.append("renewal_interval")
    if cli.oneshot:
        out.oneshot = True
        changed.append("oneshot")
    if cli.diag_addr:
        problem = addr_problem(cli.diag_addr)
        if problem:
            raise BadParameter(f"--diag-addr: {problem}", hint="e.g. --diag-addr=127.0.0.1:3001")
        out.diag_addr = cli.diag_addr
        changed.append("diag_addr")
    if cli.debug:
        out.debug = True
    if changed and cfg.source:
        log.warning(
            "CLI parameters are overriding configuration: %s",
            ", ".join(changed),
            extra={"config": cfg.source},
        )
    if changed:
        # the lifetime warnings depend on the final values
        lifetime = set(cfg.lifetime_warnings())
        out.warnings = [w for w in out.warnings if w not in lifetime] + out.lifetime_warnings()
    return out


def require_address(cfg: BotConfig) -> str:
    """The proxy address to join/renew through, or a clear error."""
    if not cfg.address:
        raise ConfigError(
            "no proxy or auth server address configured",
            hint="set proxy_server (or auth_server) in the config, or pass --proxy-server=HOST:PORT",
        )
    return cfg.address


def is_memory(dest: DestinationConfig) -> bool:
    """Whether ``dest`` keeps credentials in memory only."""
    return isinstance(dest, MemoryConfig)
