"""Fixtures every test gets.  Shared helpers live in ``helpers.py``
(servers in this process, raw peers) and ``processes.py`` (the command line
in subprocesses)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from .pki import Pki
from .redis_server import RedisServer, redis_server


@pytest.fixture(autouse=True)
def _no_inherited_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token in the developer's environment would change what servers
    and clients started by the tests do (both read ECO_TRIO_TOKEN)."""
    monkeypatch.delenv("ECO_TRIO_TOKEN", raising=False)
    assert "ECO_TRIO_TOKEN" not in os.environ


#: What a test that runs eco_trio (or another program) in a subprocess
#: calls: such tests are marked ``e2e``, and ``nox -s fast`` leaves them out.
_SUBPROCESS_CALLS = (
    "server_process(",
    "subprocess.",
    "Popen(",
    "Tmux(",
    "started(",
    "_run_on_a_terminal(",
    "_server(",
    "client(server.port",
    "client(port",
    "client(listener",
    "original_server(",
    "evil_server(",
    "supervised(",
    "nodes(redis",
    "haproxy(",
    "nginx(",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if function is None:
            continue
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            continue
        starts_a_process = any(call in source for call in _SUBPROCESS_CALLS)
        if starts_a_process or "terminal" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
        if item.path.name == "test_portable.py":
            item.add_marker(pytest.mark.portable_path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh certificate authority, and a folder for the files it issues."""
    return Pki(trustme.CA(), tmp_path)


@pytest.fixture
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for this test alone (skips if it is missing)."""
    folder = tmp_path_factory.mktemp("redis")
    folder.chmod(0o700)
    with redis_server(folder) as server:
        yield server
