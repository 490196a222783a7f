"""Entry point of an extra auth API process (``auth_service.workers``); the daemon starts it.

Not a command for people: ``teleport start`` runs ``python -m jumpgate.cli.auth_worker``
with the worker's settings in the ``JUMPGATE_AUTH_WORKER`` environment variable.
"""

from __future__ import annotations

import asyncio
import os
import sys


def main() -> int:
    from jumpgate.core.aio import install_event_loop_policy
    from jumpgate.core.auth.worker import SPEC_ENV, WorkerSpec, serve

    from .logsetup import setup_logging

    raw = os.environ.get(SPEC_ENV)
    if not raw:
        print(
            f"error: {SPEC_ENV} is not set: this process is started by `teleport start` "
            "when auth_service.workers is above 1",
            file=sys.stderr,
        )
        return 2
    spec = WorkerSpec.from_env(raw)
    setup_logging(level=spec.log_level, fmt=spec.log_format, output=spec.log_output)
    _tag_records(spec.index)
    install_event_loop_policy()
    asyncio.run(serve(spec))
    return 0


def _tag_records(index: int) -> None:
    """Every line this process logs says which worker wrote it: ``[auth worker N]`` in
    text, a ``worker`` field in JSON (the daemon's own lines have neither)."""
    import logging

    def tag(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)
        fmt = handler.formatter
        if fmt is not None and type(fmt) is logging.Formatter and fmt._fmt:
            handler.setFormatter(
                logging.Formatter(
                    fmt._fmt.replace("%(message)s", "[auth worker %(worker)s] %(message)s"),
                    fmt.datefmt,
                )
            )


if __name__ == "__main__":
    sys.exit(main())
