"""Makes this interpreter look like macOS or Windows to eco_trio: no
``select.epoll``, ``termios``, ``readline``, ``resource``, CPU affinity or
SIGHUP.

Put this folder on PYTHONPATH.  trio is imported first, so it keeps its real
I/O backend (on Linux its own epoll); everything imported afterwards,
eco_trio included, sees a ``select`` module without epoll and cannot import
termios or readline.  A Linux-only import reintroduced anywhere in eco_trio
then fails the tests that run under it.
"""

import os
import select
import signal
import sys
import types

import trio  # noqa: F401  (binds trio's backend to the real select module)

_without_epoll = types.ModuleType("select", select.__doc__)
for _name in dir(select):
    if not _name.lower().startswith("epoll"):
        setattr(_without_epoll, _name, getattr(select, _name))
sys.modules["select"] = _without_epoll
for _name in ("termios", "readline", "tty", "resource"):
    sys.modules[_name] = None  # type: ignore[assignment]  # "import termios" raises ImportError
for _module, _name in ((os, "sched_setaffinity"), (signal, "SIGHUP")):
    if hasattr(_module, _name):
        delattr(_module, _name)
