"""Go-style durations ("1h30m", "2190h", "30s"), as Teleport writes them in YAML and flags."""

from __future__ import annotations

import re
from datetime import timedelta

from jumpgate.core.errors import BadParameter

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,  # not Go, but people type it; accepted on input only
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str | int | float | timedelta, *, field: str = "duration") -> timedelta:
    """Parse a Go duration string. Plain numbers are seconds. Raise BadParameter naming ``field``."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise BadParameter(f"{field}: expected a duration such as 1h or 30m, got {text!r}")
    if isinstance(text, int | float):
        return timedelta(seconds=float(text))
    s = str(text).strip()
    if s in ("0", ""):
        return timedelta(0)
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise BadParameter(
            f"{field}: {text!r} is not a duration",
            hint="use Go duration syntax such as 30s, 20m, 1h or 2190h",
        )
    return timedelta(seconds=sign * total)


def format_duration(td: timedelta) -> str:
    """Format like Go's ``time.Duration.String()``: ``1h0m0s``, ``20m0s``, ``1.5s``, ``0s``."""
    total = td.total_seconds()
    if total == 0:
        return "0s"
    neg = total < 0
    total = abs(total)
    if total < 1:
        ms = total * 1000
        out = f"{ms:g}ms"
    else:
        hours, rem = divmod(total, 3600)
        minutes, seconds = divmod(rem, 60)
        sec = f"{seconds:.9f}".rstrip("0").rstrip(".")
        if hours:
            out = f"{int(hours)}h{int(minutes)}m{sec}s"
        elif minutes:
            out = f"{int(minutes)}m{sec}s"
        else:
            out = f"{sec}s"
    return "-" + out if neg else out


def humanize(td: timedelta) -> str:
    """Short human form for messages: ``59 minutes``, ``2 hours``, ``30 seconds``."""
    s = int(td.total_seconds())
    if s >= 2 * 3600 and s % 3600 == 0:
        return f"{s // 3600} hours"
    if s >= 3600:
        h, m = divmod(s // 60, 60)
        return f"{h} hour{'s' if h != 1 else ''}" + (f" {m} minutes" if m else "")
    if s >= 60:
        m = s // 60
        return f"{m} minute{'s' if m != 1 else ''}"
    return f"{s} second{'s' if s != 1 else ''}"
