"""eco_trio: a line-oriented TCP server that answers in uppercase, and its
client, built on trio.

The public names are loaded on first use, so ``python -m eco_trio`` starts
its command line (and its Ctrl-C guard) before trio is imported.
"""

from __future__ import annotations

from ._version import __version__

# Not typing.TYPE_CHECKING: this module imports nothing but its version, so the
# window in which Ctrl-C can only give a traceback (before __main__'s
# guard) is as short as it can be.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from eco_trio.client.core import (
        Client,
        ClientUnusable,
        ConnectionClosed,
        ServerRefused,
        connect,
        open_client,
    )
    from eco_trio.server.config import ServerConfig
    from eco_trio.server.core import Server, serve

_HOMES = {
    **dict.fromkeys(
        ("Client", "ClientUnusable", "ConnectionClosed", "ServerRefused", "connect", "open_client"), "client"
    ),
    **dict.fromkeys(("Server", "ServerConfig", "serve"), "server"),
}

__all__ = [
    "Client",
    "ClientUnusable",
    "ConnectionClosed",
    "Server",
    "ServerConfig",
    "ServerRefused",
    "__version__",
    "connect",
    "open_client",
    "serve",
]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'eco_trio' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
