"""Fixtures every test gets.  Shared helpers live in ``helpers.py``
(servers in this process, raw peers) and ``processes.py`` (the command line
in subprocesses)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_inherited_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token in the developer's environment would change what servers
    and clients started by the tests do (both read ECO_TRIO_TOKEN)."""
    monkeypatch.delenv("ECO_TRIO_TOKEN", raising=False)
    assert "ECO_TRIO_TOKEN" not in os.environ
