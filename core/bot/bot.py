"""The tbot engine: join or load the bot identity, renew it, and keep every output fresh.

Start-up: a stored identity that is still valid is reused (and renewed at
once, which proves the cluster still accepts it); without one the bot joins
with its token (the cluster's host CA checked against ``ca_pins``/``ca_path``
first). An expired identity is replaced by joining again when the configured
token is a new one; a spent token gets a clear error telling how to recover.

Every new identity is saved to storage before it is used (docs/design/
machine-id.md: a crash can never lose the only valid certificate). Then each
output gets a fresh impersonated certificate (``bots.output_cert``) written
to its destination.

Loop: every ``renewal_interval`` (or at once on :attr:`Bot.reload`, which
SIGHUP sets) renew and refresh the outputs; on failure retry with jittered
exponential backoff while the last good outputs stay in place. The time of the
last successful renewal (identity and each output) and of the next scheduled
one are kept for the diagnostics (``/readyz``, ``/metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jumpgate.core.aio import cancel_and_wait, spawn
from jumpgate.core.auth.identityfile import IdentityFile
from jumpgate.core.bot import outputs as outfiles
from jumpgate.core.bot.client import BotAPI, hostport, join, trusted_host_ca
from jumpgate.core.bot.config import BotConfig, require_address
from jumpgate.core.bot.config_outputs import (
    AnyOutput,
    ApplicationOutputConfig,
    DatabaseOutputConfig,
    output_labels,
)
from jumpgate.core.bot.destinations import DirectoryDestination, MemoryDestination, make_destination
from jumpgate.core.bot.storage import BotIdentity, BotStorage, token_hash
from jumpgate.core.errors import (
    AccessDenied,
    ConfigError,
    ConnectionProblem,
    JumpgateError,
    NotFound,
)
from jumpgate.core.failpoint import failpoint
from jumpgate.core.tlsca import (
    generate_private_key,
    load_private_key,
    private_key_to_pem,
    public_key_to_pem,
)

log = logging.getLogger(__name__)

#: First retry delay after a failed renewal (doubles per failure, capped at the interval).
BACKOFF_BASE = timedelta(seconds=5)
#: Protocol assumed for a database the bot's roles cannot list.
DEFAULT_DB_PROTOCOL = "postgres"


class BotDead(AccessDenied):
    """The bot identity expired and cannot be replaced without an operator."""


def _rfc3339(t: datetime, timespec: str = "seconds") -> str:
    return t.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _rfc3339_ms(t: datetime) -> str:
    """With milliseconds: renewals can come less than a second apart (SIGHUP, backoff)."""
    return _rfc3339(t, "milliseconds")


@dataclass
class OutputState:
    """What ``/readyz`` and ``/metrics`` report for one output."""

    label: str
    expires: datetime | None = None
    #: When its credentials were last written (its last successful renewal)
    last_success: datetime | None = None
    last_error: str = ""


@dataclass
class Metrics:
    """Counters for ``/metrics``."""

    renewals_total: int = 0
    renewal_failures_total: int = 0
    joins_total: int = 0


class Bot:
    """One tbot: its storage, its outputs and the renewal loop."""

    def __init__(
        self,
        cfg: BotConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        backoff_base: timedelta = BACKOFF_BASE,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or (lambda: datetime.now(UTC))
        self.backoff_base = backoff_base
        self.storage = BotStorage(make_destination(cfg.storage))
        self.outputs: list[tuple[AnyOutput, DirectoryDestination | MemoryDestination, str]] = []
        self.states: dict[str, OutputState] = {}
        for o, label in zip(cfg.outputs, output_labels(cfg.outputs), strict=True):
            self.outputs.append((o, make_destination(o.destination), label))
            self.states[label] = OutputState(label)
        self.metrics = Metrics()
        #: Set it (SIGHUP, SIGUSR1) to renew now.
        self.reload = asyncio.Event()
        self._stop = asyncio.Event()
        self.ident: BotIdentity | None = None
        #: When the bot identity was last renewed (or joined) successfully
        self.last_renewal: datetime | None = None
        #: When the loop renews next (identity and every output), unless a reload comes first
        self.next_renewal: datetime | None = None
        self._protocols: dict[str, str] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step."""
        self._stop.set()

    async def run(self) -> None:
        """Join/load, write every output, then (unless oneshot) renew until :meth:`stop`."""
        self.storage.init()
        self.storage.lock()
        try:
            failed = await self._startup()
            if self.cfg.oneshot:
                log.info("oneshot: every output has been written; exiting")
                return
            await self._loop(failures=1 if failed else 0)
        finally:
            self.storage.unlock()

    async def _startup(self) -> list[str]:
        """Identity and first outputs; the labels of outputs that failed (daemon mode)."""
        attempt = 0
        while True:
            try:
                await self.ensure_identity()
                break
            except ConnectionProblem as exc:
                if self.cfg.oneshot:
                    raise
                attempt += 1
                self.metrics.renewal_failures_total += 1
                delay = self._backoff(attempt)
                self._schedule(delay)
                log.warning("cannot reach the cluster (%s); retrying in %.0fs", exc.message, delay)
                if await self._wait(delay) == "stop":
                    return []
        if not self.cfg.oneshot:
            # known before the first outputs are ready, so no healthy /readyz lacks it
            # (the loop sets it again, from when the outputs are done)
            self._schedule(self.cfg.renewal_interval.total_seconds())
        failed = await self.refresh_outputs()
        if failed and self.cfg.oneshot:
            raise JumpgateError(
                f"{len(failed)} output(s) could not be generated: "
                + "; ".join(f"{label}: {self.states[label].last_error}" for label in failed),
                hint="check the bot's roles (tctl bots update NAME --add-roles=...) and the "
                "output settings",
            )
        return failed

    async def _loop(self, failures: int = 0) -> None:
        while True:
            delay = (
                self.cfg.renewal_interval.total_seconds()
                if failures == 0
                else self._backoff(failures)
            )
            self._schedule(delay)
            why = await self._wait(delay)
            if why == "stop":
                return
            if why == "reload":
                log.info("received a reload signal: renewing now")
            try:
                await self.renew_cycle()
                failures = 0
            except BotDead:
                raise
            except (JumpgateError, OSError) as exc:
                failures += 1
                self.metrics.renewal_failures_total += 1
                log.error(
                    "renewal failed (%d in a row): %s; retrying in about %.0fs; the last good "
                    "credentials stay in place",
                    failures,
                    getattr(exc, "message", None) or str(exc),
                    self._backoff(failures),
                )

    def _schedule(self, delay: float) -> None:
        """Record when the next renewal is due (``delay`` seconds from now)."""
        self.next_renewal = self.clock() + timedelta(seconds=max(delay, 0.0))

    def _backoff(self, failures: int) -> float:
        """Jittered exponential backoff, capped at the renewal interval."""
        cap = max(self.cfg.renewal_interval.total_seconds(), 1.0)
        base = self.backoff_base.total_seconds() * float(2 ** min(failures - 1, 16))
        return min(cap, base) * random.uniform(0.75, 1.25)

    async def _wait(self, seconds: float) -> str:
        """Sleep ``seconds`` unless stopped or asked to reload: ``stop``/``reload``/``timeout``."""
        if self._stop.is_set():
            return "stop"
        stop_t = spawn(self._stop.wait(), name="tbot-wait-stop")
        reload_t = spawn(self.reload.wait(), name="tbot-wait-reload")
        try:
            await asyncio.wait(
                {stop_t, reload_t}, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel_and_wait(stop_t)
            await cancel_and_wait(reload_t)
        if self._stop.is_set():
            return "stop"
        if self.reload.is_set():
            self.reload.clear()
            return "reload"
        return "timeout"

    # ------------------------------------------------------------------ identity
    async def ensure_identity(self) -> None:
        """Reuse (and renew) the stored identity, or join; see the module docstring."""
        stored = self.storage.load()
        token = self.cfg.onboarding.token_value()
        used = self.storage.stored_token_hash()
        now = self.clock()
        if stored is not None and stored.valid(now):
            if token and used and token_hash(token) != used:
                log.info("the configured join token changed: joining again with the new token")
                try:
                    await self._join(token)
                    return
                except AccessDenied as exc:
                    log.warning(
                        "joining with the new token failed (%s); keeping the stored identity",
                        exc.message,
                    )
            self.ident = stored
            log.info(
                "loaded the identity of bot %s from %s (generation %d, valid until %s)",
                stored.identity.bot_name,
                self.storage.describe(),
                stored.generation,
                _rfc3339(stored.expires),
            )
            await self._renew()
            return
        if stored is not None:
            name = stored.identity.bot_name
            log.warning(
                "the stored identity of bot %s expired at %s", name, _rfc3339(stored.expires)
            )
            if not token or token_hash(token) == used:
                raise self._dead(name, stored.expires, "its join token was already used")
            try:
                await self._join(token)
            except AccessDenied as exc:
                raise self._dead(name, stored.expires, exc.message) from None
            return
        if not token:
            raise ConfigError(
                f"no bot identity in {self.storage.describe()} and no join token configured",
                hint="set onboarding.token (or pass --token) to the token from tctl bots add",
            )
        await self._join(token)

    def _dead(self, name: str, expired: datetime, why: str) -> BotDead:
        return BotDead(
            f"the identity of bot {name!r} in {self.storage.describe()} expired at "
            f"{_rfc3339(expired)} and cannot be renewed: {why}",
            hint=f"recover with a new token: tctl bots rm {name} && tctl bots add {name} "
            "--roles=..., then set onboarding.token (or --token) to the new token and start "
            "tbot again",
        )

    async def _join(self, token: str) -> None:
        addr = require_address(self.cfg)
        ob = self.cfg.onboarding
        ca_pem = await trusted_host_ca(
            addr, ca_pins=ob.ca_pins, ca_path=ob.ca_path, insecure=self.cfg.insecure
        )
        key_pem = self.storage.pending_join_key(token)
        if key_pem is not None:
            log.info("retrying an unfinished join with the same token and key")
        else:
            key_pem = private_key_to_pem(generate_private_key())
            self.storage.save_join_key(token, key_pem)  # a lost answer can be asked again
        failpoint("bot.join.before_request")
        issued = await join(
            addr,
            token=token,
            public_key_pem=public_key_to_pem(load_private_key(key_pem).public_key()),
            ttl_seconds=self.cfg.certificate_ttl.total_seconds(),
            ca_pem=ca_pem,
        )
        failpoint("bot.join.after_response")
        ident = BotIdentity(key_pem, issued.cert_pem, issued.host_ca, issued.user_ca)
        ident.check()
        self.storage.save(ident, token=token)  # saved before it is used
        self.storage.clear_join_key()
        self.ident = ident
        self.last_renewal = self.clock()
        self.metrics.joins_total += 1
        log.info(
            "joined the cluster %s as bot %s (generation %d, valid until %s)",
            ident.cluster_name,
            ident.identity.bot_name,
            ident.generation,
            _rfc3339(ident.expires),
        )

    def _api(self, ident: IdentityFile) -> BotAPI:
        return BotAPI(require_address(self.cfg), ident)

    async def _renew(self) -> None:
        old = self.ident
        assert old is not None
        key = generate_private_key()
        api = self._api(old.ident_file())
        failpoint("bot.renew.before_request")
        try:
            issued = await api.renew(
                public_key_pem=public_key_to_pem(key.public_key()),
                ttl_seconds=self.cfg.certificate_ttl.total_seconds(),
            )
        finally:
            await api.close()
        failpoint("bot.renew.after_response")
        new = BotIdentity(private_key_to_pem(key), issued.cert_pem, issued.host_ca, issued.user_ca)
        new.check()
        if new.identity.bot_name != old.identity.bot_name:
            raise AccessDenied(
                f"the cluster renewed bot {old.identity.bot_name!r} as {new.identity.bot_name!r}"
            )
        self.storage.save(new)  # saved before it is used
        failpoint("bot.renew.after_save")
        self.ident = new
        self.last_renewal = self.clock()
        self.metrics.renewals_total += 1
        log.info(
            "renewed the identity of bot %s (generation %d, valid until %s)",
            new.identity.bot_name,
            new.generation,
            _rfc3339(new.expires),
        )

    async def renew_cycle(self) -> None:
        """Renew (or, once expired, rejoin) and refresh every output; raise if any failed."""
        if self.ident is None or not self.ident.valid(self.clock()):
            await self.ensure_identity()
        else:
            await self._renew()
        failed = await self.refresh_outputs()
        if failed:
            raise JumpgateError(f"output(s) {', '.join(failed)} could not be refreshed")

    # ------------------------------------------------------------------ outputs
    async def refresh_outputs(self) -> list[str]:
        """Write fresh credentials to every output; the labels of those that failed."""
        assert self.ident is not None
        failed: list[str] = []
        if not self.outputs:
            return failed  # no TLS context to build for nothing
        api = self._api(self.ident.ident_file())
        try:
            for out, dest, label in self.outputs:
                state = self.states[label]
                try:
                    creds = await self._credentials(api, out)
                    files = outfiles.render(out, creds)
                    await asyncio.to_thread(self._write, out, dest, files)
                except JumpgateError as exc:
                    failed.append(state.label)
                    state.last_error = exc.message
                    log.error("could not generate the %s output: %s", state.label, exc.message)
                    continue
                except OSError as exc:
                    failed.append(state.label)
                    state.last_error = f"cannot write to {dest.describe()}: {exc.strerror or exc}"
                    log.error("could not write the %s output: %s", state.label, state.last_error)
                    continue
                state.expires, state.last_success, state.last_error = (
                    creds.expires,
                    self.clock(),
                    "",
                )
                log.info(
                    "Generated identity for %s (valid until %s)",
                    _what(out),
                    _rfc3339(creds.expires),
                )
        finally:
            await api.close()
        return failed

    @staticmethod
    def _write(
        out: AnyOutput, dest: DirectoryDestination | MemoryDestination, files: dict[str, bytes]
    ) -> None:
        dest.init(outfiles.subdirs(out))
        dest.write_many(files)  # switched over together: no new key beside an old cert

    async def _credentials(self, api: BotAPI, out: AnyOutput) -> outfiles.Credentials:
        key = generate_private_key()
        db_route = app_route = None
        if isinstance(out, DatabaseOutputConfig):
            db_route = {
                "service_name": out.service,
                "protocol": await self._db_protocol(api, out),
                "username": out.username,
                "database": out.database,
            }
        elif isinstance(out, ApplicationOutputConfig):
            assert self.ident is not None
            host, _ = hostport(require_address(self.cfg))
            app_route = {
                "name": out.app_name,
                "public_addr": f"{out.app_name}.{host}",
                "cluster_name": self.ident.cluster_name,
            }
        issued = await api.output_cert(
            public_key_pem=public_key_to_pem(key.public_key()),
            ttl_seconds=self.cfg.certificate_ttl.total_seconds(),
            roles=list(out.roles),
            route_to_database=db_route,
            route_to_app=app_route,
        )
        return outfiles.Credentials(
            key_pem=private_key_to_pem(key),
            cert_pem=issued.cert_pem,
            host_ca=issued.host_ca,
            user_ca=issued.user_ca,
            db_ca=issued.db_ca,
            expires=issued.expires,
        )

    async def _db_protocol(self, api: BotAPI, out: DatabaseOutputConfig) -> str:
        """The database's protocol, looked up once with the output's roles (``db.list``)."""
        if out.service in self._protocols:
            return self._protocols[out.service]
        key = generate_private_key()
        probe_cert = await api.output_cert(
            public_key_pem=public_key_to_pem(key.public_key()),
            ttl_seconds=min(300.0, self.cfg.certificate_ttl.total_seconds()),
            roles=list(out.roles),
        )
        assert self.ident is not None
        probe = self._api(
            IdentityFile(private_key_to_pem(key), probe_cert.cert_pem, (self.ident.host_ca,))
        )
        try:
            dbs = await probe.db_list()
        except NotFound:
            dbs = []
        finally:
            await probe.close()
        for db in dbs:
            if db.get("name") == out.service:
                proto = str(db.get("protocol") or DEFAULT_DB_PROTOCOL)
                self._protocols[out.service] = proto
                return proto
        if out.service not in self._warned:
            self._warned.add(out.service)
            log.warning(
                "database %r is not registered or not visible to the bot's roles (db.list); "
                "assuming protocol %s (to let the bot look it up, give its role the rule "
                "{resources: [db_server, db], verbs: [read, list]})",
                out.service,
                DEFAULT_DB_PROTOCOL,
            )
        return DEFAULT_DB_PROTOCOL

    # ------------------------------------------------------------------ health
    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when every output holds unexpired credentials; per-output detail (with the
        last and next renewal), and the bot identity's own (``identity``)."""
        now = self.clock()
        services: dict[str, object] = {}
        # without outputs, ready means the bot's own identity is valid
        ready = bool(self.states) or (self.ident is not None and self.ident.valid(now))
        for label, st in self.states.items():
            ok = st.expires is not None and st.expires > now
            ready = ready and ok
            detail: dict[str, object] = {"status": "healthy" if ok else "unhealthy"}
            if st.expires is not None:
                detail["expires"] = _rfc3339(st.expires)
            if st.last_success is not None:
                detail["last_renewal"] = _rfc3339_ms(st.last_success)
            if self.next_renewal is not None:
                detail["next_renewal"] = _rfc3339_ms(self.next_renewal)
            if st.last_error:
                detail["reason"] = st.last_error
            elif st.expires is None:
                detail["status"], detail["reason"] = "initializing", "not generated yet"
            services[label] = detail
        identity: dict[str, object] = {}
        if self.ident is not None:
            identity["expires"] = _rfc3339(self.ident.expires)
        if self.last_renewal is not None:
            identity["last_renewal"] = _rfc3339_ms(self.last_renewal)
        if self.next_renewal is not None:
            identity["next_renewal"] = _rfc3339_ms(self.next_renewal)
        return ready, {
            "status": "healthy" if ready else "unhealthy",
            "services": services,
            "identity": identity,
        }


def _what(out: AnyOutput) -> str:
    if isinstance(out, ApplicationOutputConfig):
        return f'app {{"{out.app_name}"}}'
    if isinstance(out, DatabaseOutputConfig):
        return f'database {{"{out.service}"}}'
    return f"{out.type} output ({out.destination.describe()})"
