"""The server: its config and listeners, admission, the conversation, the
registry of clients, tokens, stats, metrics and the log."""

from eco_trio.server.config import ServerConfig
from eco_trio.server.core import Server, serve

__all__ = ["Server", "ServerConfig", "serve"]
