"""``bench``: its options, and running the load generator."""

from __future__ import annotations

import argparse
import json
import os
import sys

from eco_trio.bench.core import MODES, BenchConfig, format_result, run_bench
from eco_trio.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNANSWERED,
    EXIT_USAGE,
    Parser,
    add_address_options,
    not_negative,
    not_negative_int,
    positive,
)


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure a server",
        epilog="Exit status: 0 every reply right; 1 a wrong reply; 2 a usage error; 3 requests left "
        "unanswered (the server closed, refused or said ERROR; the reason is printed in its own words).",
        description="Load-test a server (eco_trio or any line-uppercasing one) and check every reply. "
        "On a small machine, pin the server and the benchmark to different cores, e.g. "
        "'taskset -c 1 python -m eco_trio servidor' and 'taskset -c 0 python -m eco_trio bench'.",
    )
    add_address_options(bench, "127.0.0.1")
    bench.add_argument(
        "--clients",
        type=positive(int),
        default=50,
        metavar="N",
        help="connections (connect mode: concurrent slots) (default: %(default)s)",
    )
    bench.add_argument(
        "--seconds",
        type=positive(float),
        default=3.0,
        metavar="S",
        help="measurement window, a hard bound (hold: how long to hold) (default: %(default)s)",
    )
    bench.add_argument(
        "--mode",
        choices=MODES,
        default="pingpong",
        help="pingpong: 1 line in flight per connection; pipeline: --pipeline lines in "
        "flight; connect: connect, greeting, one line, close, repeat; hold: open and hold "
        "--clients connections (default: %(default)s)",
    )
    bench.add_argument(
        "--pipeline",
        type=positive(int),
        default=16,
        metavar="K",
        help="lines in flight per connection in pipeline mode (default: %(default)s)",
    )
    bench.add_argument(
        "--size",
        type=positive(int),
        default=64,
        metavar="BYTES",
        help="bytes per line, without the newline (default: %(default)s)",
    )
    bench.add_argument(
        "--greeting-lines",
        type=not_negative_int,
        default=1,
        metavar="N",
        help="lines the server sends on connect, skipped (default: %(default)s)",
    )
    bench.add_argument(
        "--warmup",
        type=not_negative,
        default=0.5,
        metavar="S",
        help="seconds of load before measuring (default: %(default)s)",
    )
    bench.add_argument(
        "--server-pid",
        type=int,
        default=None,
        metavar="PID",
        help="hold mode: read this process's memory from /proc to report it per connection",
    )
    bench.add_argument(
        "--cpu",
        type=int,
        default=None,
        metavar="N",
        help="run the benchmark on CPU N only (pin the server elsewhere, e.g. with taskset)",
    )
    bench.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="speak TLS, trusting this CA ('' for the system's store) (default: plain text)",
    )
    bench.add_argument("--tls-server-name", metavar="NAME", help="the name to check the certificate against")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of text")


# --- servidor -----------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        config = BenchConfig(
            host=args.host,
            port=args.port,
            clients=args.clients,
            seconds=args.seconds,
            mode=args.mode,
            pipeline=args.pipeline,
            size=args.size,
            greeting_lines=args.greeting_lines,
            warmup=args.warmup,
            server_pid=args.server_pid,
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
        )
    except ValueError as exc:
        print(f"{args.prog} bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.cpu is not None:
        if not hasattr(os, "sched_setaffinity"):
            print(
                f"{args.prog} bench: error: --cpu needs CPU affinity, which this platform does not offer "
                "(Linux has it); leave it out",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            os.sched_setaffinity(0, {args.cpu})
        except (OSError, ValueError) as exc:
            print(f"{args.prog} bench: error: cannot run on CPU {args.cpu}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    live = sys.stderr.isatty() and not args.json

    def progress(elapsed: float, replies: int) -> None:
        left = max(0.0, args.seconds - elapsed)
        rate = replies / elapsed if elapsed else 0
        sys.stderr.write(
            f"\r\x1b[2K  {elapsed:4.1f} s done, {left:4.1f} s left  {replies:>12,} replies  {rate:>12,.0f}/s"
        )
        sys.stderr.flush()

    try:
        result = run_bench(config, progress if live else None)
    except OSError as exc:
        print(f"{args.prog} bench: {exc.strerror or exc}. Is the server running?", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    if live:
        sys.stderr.write("\r\x1b[2K")
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(format_result(result))
    if result.mismatches:
        return EXIT_FAILURE
    if result.errors or not (result.replies or result.connections_held):
        return EXIT_UNANSWERED
    return EXIT_OK
