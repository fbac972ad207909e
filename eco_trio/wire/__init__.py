"""The wire, sans-IO: bytes in, events out, bytes back.  No module here
imports trio, socket or asyncio, or reads a clock (the import contract in
pyproject.toml checks it)."""
