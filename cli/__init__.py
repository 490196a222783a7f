"""Jumpgate command-line faces: teleport, tctl, tsh, tbot.

Help is rendered plainly, as Teleport's is: typer would otherwise import rich
(about 100 ms) for every ``--help`` and every option with a default, which is
start-up time a user pays on each command and each shell completion.
"""

import typer.core as _typer_core

_typer_core.HAS_RICH = False
