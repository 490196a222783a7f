"""Durations, byte counts and countdown colours for the dashboard's cells."""

from __future__ import annotations

from datetime import datetime, timedelta


def countdown(left: timedelta) -> str:
    """``2h03m17s`` / ``4m05s`` / ``EXPIRED``."""
    secs = int(left.total_seconds())
    if secs <= 0:
        return "EXPIRED"
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h{mins:02d}m"
    if hours:
        return f"{hours}h{mins:02d}m{secs:02d}s"
    return f"{mins}m{secs:02d}s"


def fraction_style(fraction: float) -> str:
    """Colour of a countdown by the share of the validity left: green, yellow, red."""
    if fraction <= 0:
        return "bold red reverse"
    if fraction < 0.1:
        return "bold red"
    if fraction < 0.3:
        return "yellow"
    return "green"


def short_time(t: datetime | None) -> str:
    """Local ``HH:MM:SS`` (with the date when it is not today)."""
    if t is None:
        return "-"
    local = t.astimezone()
    if local.date() == datetime.now().astimezone().date():
        return f"{local:%H:%M:%S}"
    return f"{local:%Y-%m-%d %H:%M}"


def human_bytes(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
