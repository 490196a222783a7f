"""Failpoints: named steps where a test makes the process die as a crash would.

``JUMPGATE_FAILPOINTS=bot.renew.after_response`` (comma-separated names) makes
:func:`failpoint` send SIGKILL to the running process when it reaches that step, so
crash-safety tests kill -9 at an exact point instead of racing a timer. With the
variable unset (always, outside tests) a failpoint is one set lookup.

The names in use are listed in :data:`KNOWN` (an unknown name is logged as a
warning; the tests also check the process really died with SIGKILL).
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

ENV = "JUMPGATE_FAILPOINTS"

#: Every failpoint in the code base, with the step it marks.
KNOWN = {
    "bot.join.before_request": "tbot generated (and saved) its key, the join is not sent",
    "bot.join.after_response": "the cluster issued the first identity, tbot has not saved it",
    "bot.renew.before_request": "tbot generated a new key, the renewal is not sent",
    "bot.renew.after_response": "the cluster issued the next generation, tbot has not saved it",
    "bot.storage.after_identity": "the identity bundle is saved, its separate pieces are not",
    "bot.renew.after_save": "the renewed identity is saved, no output is refreshed",
    "bot.output.after_first_file": "one file of an output is renamed into place, the others not yet",
}


def _active() -> frozenset[str]:
    names = frozenset(n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip())
    for name in sorted(names - KNOWN.keys()):
        log.warning("unknown failpoint %r in %s (known: %s)", name, ENV, ", ".join(KNOWN))
    return names


ACTIVE = _active()


def failpoint(name: str) -> None:
    """Die here with SIGKILL when ``name`` is active (see the module docstring)."""
    if name in ACTIVE:
        log.warning("failpoint %s: killing the process (%s)", name, KNOWN[name])
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
