"""Suite-wide fixtures and helpers. Keep it small: area fixtures live next to their tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import pytest
from hypothesis import settings

settings.register_profile(
    "jumpgate",
    deadline=None,
    max_examples=50,
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "jumpgate"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(name="free_port")
def _free_port_fixture() -> Callable[[], int]:
    """The ``free_port`` function as a fixture: ``def test_x(free_port): port = free_port()``."""
    return free_port
