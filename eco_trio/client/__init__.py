"""The client: the ``connect()``/``Client`` API, the piped and argument
sessions, the interactive session and its terminal."""

from eco_trio.client.core import Client, ClientUnusable, ConnectionClosed, ServerRefused, connect, open_client

__all__ = ["Client", "ClientUnusable", "ConnectionClosed", "ServerRefused", "connect", "open_client"]
