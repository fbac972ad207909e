"""eco_trio: a line-oriented TCP server that answers in uppercase, and its
client, built on trio."""

__version__ = "0.1.0"  # first: the modules below read it

from .client import Client, ClientUnusable, ConnectionClosed, ServerRefused, connect, open_client
from .server import Server, ServerConfig, serve

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
