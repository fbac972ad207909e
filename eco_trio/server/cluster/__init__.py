"""Many servers that behave as one, on Redis (``servidor --redis URL``).

Imported only when a server is started with ``--redis``: without it, no
Redis client is loaded and the server is exactly the single process it
always was.  ``node.py`` is one server's membership of a deployment;
``scripts.py`` holds the Lua that makes each step atomic in Redis.
"""


class DeploymentError(Exception):
    """The deployment cannot be joined (Redis unreachable, the name taken)."""
