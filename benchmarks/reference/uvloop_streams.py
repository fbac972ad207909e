"""Reference: the asyncio streams server of ``asyncio_streams.py``, on uvloop
(libuv's event loop, the usual way to make asyncio faster).

python benchmarks/reference/uvloop_streams.py PORT

uvloop is a dependency of this benchmark only: ``pip install uvloop``
(``benchmarks/requirements.txt``); benchmarks/compare leaves this row out,
saying why, where it is not installed.
"""

from __future__ import annotations

import sys

import uvloop
from asyncio_streams import main

if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), None))
