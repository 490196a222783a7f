"""tbot diagnostics over HTTP (``diag_addr``): ``/livez``, ``/readyz``, ``/metrics``.

* ``/livez``: 200 while the process runs;
* ``/readyz``: 200 only when every output holds unexpired credentials, else
  503; the JSON body has one entry per output (``/readyz/<name>`` for one);
* ``/metrics``: Prometheus text format (renewals, failures, seconds until the
  bot identity and each output expire, and the last and next renewal of each
  as unix timestamps).

The ``/readyz`` detail of each output, and its ``identity`` entry for the bot
identity, carry ``last_renewal`` (the last successful renewal) and
``next_renewal`` (the next scheduled one) as ISO-8601 UTC times.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from aiohttp import web

from jumpgate.core.bot.bot import Bot

log = logging.getLogger(__name__)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(bot: Bot, now: datetime | None = None) -> str:
    """The Prometheus exposition of ``bot``'s counters and expiries."""
    now = now or datetime.now(UTC)
    m = bot.metrics
    lines = [
        "# HELP tbot_renewals_total Successful renewals of the bot identity.",
        "# TYPE tbot_renewals_total counter",
        f"tbot_renewals_total {m.renewals_total}",
        "# HELP tbot_renewal_failures_total Failed renewal attempts (identity or outputs).",
        "# TYPE tbot_renewal_failures_total counter",
        f"tbot_renewal_failures_total {m.renewal_failures_total}",
        "# HELP tbot_joins_total Joins with a token.",
        "# TYPE tbot_joins_total counter",
        f"tbot_joins_total {m.joins_total}",
        "# HELP tbot_identity_expiry_seconds Seconds until the bot identity expires.",
        "# TYPE tbot_identity_expiry_seconds gauge",
    ]
    if bot.ident is not None:
        lines.append(
            f"tbot_identity_expiry_seconds {(bot.ident.expires - now).total_seconds():.0f}"
        )
    lines += [
        "# HELP tbot_output_expiry_seconds Seconds until an output's credentials expire.",
        "# TYPE tbot_output_expiry_seconds gauge",
    ]
    for label, st in bot.states.items():
        if st.expires is not None:
            lines.append(
                f'tbot_output_expiry_seconds{{output="{_label(label)}"}} '
                f"{(st.expires - now).total_seconds():.0f}"
            )
    lines += _timestamps(
        "tbot_identity_last_renewal_timestamp_seconds",
        "Unix time of the bot identity's last successful renewal (or join).",
        [("", bot.last_renewal)],
    )
    lines += _timestamps(
        "tbot_identity_next_renewal_timestamp_seconds",
        "Unix time of the next scheduled renewal of the bot identity.",
        [("", bot.next_renewal)],
    )
    lines += _timestamps(
        "tbot_output_last_renewal_timestamp_seconds",
        "Unix time an output's credentials were last written.",
        [(label, st.last_success) for label, st in bot.states.items()],
    )
    lines += _timestamps(
        "tbot_output_next_renewal_timestamp_seconds",
        "Unix time of the next scheduled renewal of an output.",
        [(label, bot.next_renewal) for label in bot.states],
    )
    lines += [
        "# HELP tbot_output_healthy 1 when the output holds unexpired credentials.",
        "# TYPE tbot_output_healthy gauge",
    ]
    for label, st in bot.states.items():
        ok = st.expires is not None and st.expires > now
        lines.append(f'tbot_output_healthy{{output="{_label(label)}"}} {int(ok)}')
    return "\n".join(lines) + "\n"


def _timestamps(name: str, help_text: str, samples: list[tuple[str, datetime | None]]) -> list[str]:
    """One gauge of unix timestamps; ``samples`` are (output label or "", time or None)."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    for label, t in samples:
        if t is None:
            continue
        labels = f'{{output="{_label(label)}"}}' if label else ""
        lines.append(f"{name}{labels} {t.timestamp():.3f}")
    return lines


class Diagnostics:
    """The diagnostics HTTP server of one :class:`Bot`."""

    def __init__(self, bot: Bot, addr: str) -> None:
        self.bot = bot
        self.addr = addr
        self.address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/readyz/{name}", self._readyz_one)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, body = self.bot.readiness()
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps(body, indent=2) + "\n",
            content_type="application/json",
        )

    async def _readyz_one(self, request: web.Request) -> web.Response:
        _, body = self.bot.readiness()
        services = body.get("services")
        name = request.match_info["name"]
        detail = services.get(name) if isinstance(services, dict) else None
        if not isinstance(detail, dict):
            return web.json_response(
                {"status": "unknown", "reason": f"no output {name!r}"}, status=404
            )
        return web.json_response(detail, status=200 if detail.get("status") == "healthy" else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text=metrics_text(self.bot),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def start(self) -> tuple[str, int]:
        """Listen on ``addr``; returns the bound (host, port)."""
        host, _, port = self.addr.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._runner = web.AppRunner(self._app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname() if sockets else (host, int(port))
        self.address = (str(bound[0]), int(bound[1]))
        log.info("diagnostics listening on http://%s:%d (/livez, /readyz, /metrics)", *self.address)
        return self.address

    async def close(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
