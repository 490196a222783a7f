"""Logging for the daemons: text or JSON lines, configured only by entry points."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, component, message and ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "component": record.name.removeprefix("jumpgate.core."),
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v if isinstance(v, str | int | float | bool | None) else str(v)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(*, level: str = "INFO", fmt: str = "text", output: str = "stderr") -> None:
    """Send logs to stderr/stdout/a file as text or JSON."""
    if output == "stdout":
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    elif output in ("stderr", "", "syslog"):
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(output)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-5s [%(name)s] %(message)s", "%Y-%m-%dT%H:%M:%S%z"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = {"WARN": "WARNING", "TRACE": "DEBUG"}.get(level.upper(), level.upper())
    if lvl not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        lvl = "INFO"
    root.setLevel(lvl)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
