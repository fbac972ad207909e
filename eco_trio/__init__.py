"""eco_trio: a line-oriented TCP server that answers in uppercase, and its
client, built on trio."""

from .client import Client, ConnectionClosed, connect
from .server import Server, ServerConfig, serve

__version__ = "0.1.0"

__all__ = ["Client", "ConnectionClosed", "Server", "ServerConfig", "__version__", "connect", "serve"]
