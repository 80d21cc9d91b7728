"""Fixtures shared by the engine tests."""
from __future__ import annotations

import pytest

from tests.model_helpers import LoopbackServer


@pytest.fixture
def server():
    """A loopback HTTP server holding the files a test puts in it (``LoopbackServer``);
    closed after the test. A test file may define its own (a stalling one)."""
    s = LoopbackServer()
    yield s
    s.close()
