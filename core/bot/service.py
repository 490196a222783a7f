"""Run a :class:`~jumpgate.core.bot.bot.Bot` as a process: signals, pid file, diagnostics.

SIGINT/SIGTERM stop the bot; SIGHUP (``systemctl reload``, the unit's
``ExecReload=/bin/kill -HUP $MAINPID``) and SIGUSR1 renew at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from jumpgate.core.aio import install_event_loop_policy
from jumpgate.core.bot.bot import Bot
from jumpgate.core.bot.config import BotConfig
from jumpgate.core.bot.diag import Diagnostics
from jumpgate.core.fsutil import atomic_write

log = logging.getLogger(__name__)


async def serve(cfg: BotConfig, *, pid_file: str = "") -> None:
    """Run the bot until it finishes (oneshot), fails, or is stopped by a signal."""
    for warning in cfg.warnings:
        log.warning("%s", warning)
    bot = Bot(cfg)
    loop = asyncio.get_running_loop()
    handlers = {
        signal.SIGINT: bot.stop,
        signal.SIGTERM: bot.stop,
        signal.SIGHUP: bot.reload.set,
        signal.SIGUSR1: bot.reload.set,
    }
    for sig, fn in handlers.items():
        loop.add_signal_handler(sig, fn)
    if pid_file:
        atomic_write(pid_file, f"{os.getpid()}\n", mode=0o644)
    diag = Diagnostics(bot, cfg.diag_addr) if cfg.diag_addr and not cfg.oneshot else None
    try:
        if diag is not None:
            await diag.start()
        await bot.run()
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
        if diag is not None:
            await diag.close()
        if pid_file:
            with contextlib.suppress(OSError):
                Path(pid_file).unlink()


def run_bot(cfg: BotConfig, *, pid_file: str = "") -> None:
    """Blocking entry point for ``tbot start``."""
    install_event_loop_policy()
    asyncio.run(serve(cfg, pid_file=pid_file))
