"""The version every face reports."""

from __future__ import annotations

#: Jumpgate's own version.
VERSION = "0.1.0"
#: The Teleport version whose interfaces Jumpgate follows.
TELEPORT_COMPAT = "16.4.0"
