"""Shared test setup."""

from __future__ import annotations

import pytest

from fedunlearn.flower.compat import server_task_identity


@pytest.fixture(autouse=True)
def _flower_task_identity():
    """Messages built in unit tests (mock replies) need a task identity, as inside a ServerApp."""
    with server_task_identity():
        yield
