"""The command line: ``python -m eco_trio servidor | cliente | bench``.

The command line is the only part of eco_trio that touches argv, the
environment, stdin/stdout, print and ``trio.run``.  Each program has its
module (``servidor.py``, ``cliente.py``, ``bench.py``); what they share is
in ``common.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eco_trio._version import __version__
from eco_trio.cli import bench, cliente, servidor
from eco_trio.cli.common import Parser, program_name


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog or program_name(),
        description="A line-oriented TCP server that answers in uppercase, and its client.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"eco_trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{servidor,cliente,bench}")
    servidor.add_parser(commands)
    cliente.add_parser(commands)
    bench.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.prog = parser.prog
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.command == "servidor":
        return servidor.run(args)
    if args.command == "bench":
        return bench.run(args)
    return cliente.run(args)
