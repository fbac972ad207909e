"""The reference servers benchmarks/compare measures eco_trio against speak
the same protocol, checked reply by reply (a reference that answered wrongly
would make every ratio meaningless), compare's report shows what it
promises, and benchmarks/proxy.py's generator speaks PROXY as the server
expects."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from eco_trio.bench.core import BenchConfig, run_bench

from .processes import free_port, program_server, server_process

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "benchmarks" / "reference"


def check_replies(port: int) -> None:
    for mode, depth in (("pingpong", 1), ("pipeline", 8), ("connect", 1)):
        result = run_bench(
            BenchConfig(port=port, mode=mode, clients=3, pipeline=depth, seconds=0.3, warmup=0.0)
        )
        assert result.replies > 0, mode
        assert (result.errors, result.mismatches) == (0, 0), (mode, result.first_error)


def built(source: Path, program: Path) -> Path:
    """``program``, built from ``source``, or the test skips: the C programs
    of benchmarks/ need Linux (epoll) and a C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip(f"{source.name} needs Linux (epoll) and a C compiler (Debian: gcc)")
    subprocess.run([compiler, "-O2", "-o", str(program), str(source)], check=True, timeout=120)
    return program


def test_the_c_reference_answers_every_line_in_uppercase(tmp_path: Path) -> None:
    binary = built(REFERENCES / "c_epoll.c", tmp_path / "c_epoll")
    port = free_port()
    with program_server([str(binary), str(port)], port):
        check_replies(port)
        # A line cut across reads comes back whole, after the greeting.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"BIENVENIDO")
            sock.sendall(b"ho")
            time.sleep(0.05)
            sock.sendall(b"la\nmundo\n")
            assert reader.readline() + reader.readline() == b"HOLA\nMUNDO\n"


@pytest.mark.parametrize("name", ["asyncio_streams", "uvloop_streams"])
def test_the_python_references_answer_every_line_in_uppercase(name: str) -> None:
    if name == "uvloop_streams" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed (pip install -r benchmarks/requirements.txt)")
    port = free_port()
    with program_server([sys.executable, str(REFERENCES / f"{name}.py"), str(port)], port):
        check_replies(port)


def load_compare() -> ModuleType:
    """benchmarks/compare, a script without the .py suffix, as a module."""
    name = "benchmarks_compare"
    loader = importlib.machinery.SourceFileLoader(name, str(ROOT / "benchmarks" / "compare"))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    loader.exec_module(module)
    return module


def test_compare_reports_percentiles_and_cpu_for_every_load() -> None:
    compare = load_compare()
    rows = []
    for name, scale in (("asyncio streams", 1.0), ("eco_trio", 2.0)):
        row = compare.Row(name)
        for key, _, _ in compare.LOADS:
            row.figures |= {key: 1000 * scale, f"{key}_cpu": 8 / scale}
            row.figures |= {f"{key}_p50": 100 / scale, f"{key}_p99": 200 / scale, f"{key}_p999": 300 / scale}
        rows.append(row)
    report = compare.table(rows, hold=0)
    assert "p50 / p99 / p99.9" in report
    assert "| eco_trio | 2,000 **2.00x** | 2,000 **2.00x** | 2,000 **2.00x** | 2,000 **2.00x** |" in report
    assert "| eco_trio | 50 / 100 / 150 | 50 / 100 / 150 | 50 / 100 / 150 | 50 / 100 / 150 |" in report
    assert "| eco_trio | 4.0 | 4.0 | 4.0 | 4.0 |" in report


def test_compare_says_why_a_reference_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    compare = load_compare()
    monkeypatch.setattr(compare.importlib.util, "find_spec", lambda name: None)
    assert "pip install -r benchmarks/requirements.txt" in compare.missing("uvloop streams")
    monkeypatch.setattr(compare, "C_COMPILER", None)  # (what machine.py finds where there is none)
    assert "C compiler" in compare.missing("C epoll")
    assert compare.missing("asyncio streams") is None


def test_compare_summarises_rounds_with_medians() -> None:
    """--rounds: a line per round of the target figures, and their medians;
    a server a round lacks (uvloop not installed) shows as a dash."""
    compare = load_compare()

    def round_of(eco_pp50: float, uvloop: bool) -> list[object]:
        rows = []
        for name, pp50 in (("asyncio streams", 100.0), ("eco_trio", eco_pp50), ("uvloop streams", 120.0)):
            if name == "uvloop streams" and not uvloop:
                continue
            row = compare.Row(name)
            cpu = 12.5 if name == "uvloop streams" else 10.0
            row.figures |= {"pp50": pp50, "pp50_cpu": cpu, "pp1": 50.0, "conn_cpu": 80.0}
            rows.append(row)
        return rows

    report = compare.summary([round_of(130, True), round_of(110, True), round_of(150, False)])
    lines = report.splitlines()
    assert lines[0].startswith("| round | eco pp50 / asyncio | uvloop pp50 / asyncio |")
    assert lines[2].startswith("| 1 | 1.30x | 1.20x | 1.08 | 10.0 | 12.5 | 0.80 |")  # CPU paired by round
    assert lines[4].startswith("| 3 | 1.50x | – | – |")
    assert lines[5].startswith("| **median** | **1.30x** | **1.20x** | **1.00** |")  # median of 1.08 and 0.92


def test_compare_rounds_go_load_by_load_and_turn_the_servers_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round measures one load on every server before the next load, so
    the windows a ratio compares are close in time, and each round starts
    one server further on, so no server is always measured last."""
    compare = load_compare()
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(compare, "measure_load", lambda row, key, *_: calls.append((key, row.name)))
    monkeypatch.setattr(compare, "measure_hold", lambda row, hold: calls.append(("hold", row.name)))
    names = ["asyncio streams", "uvloop streams", "eco_trio"]
    rows = compare.measure_round(names, argparse.Namespace(hold=10), 1)
    assert [row.name for row in rows] == names
    loads = [key for key, _, _ in compare.LOADS]
    turned = ["uvloop streams", "eco_trio", "asyncio streams"]
    assert calls == [(key, name) for key in loads for name in turned] + [("hold", name) for name in names]
    calls.clear()
    compare.measure_round(names, argparse.Namespace(hold=0), 3)  # a full turn: the first order again
    assert calls[:3] == [(loads[0], name) for name in names]


def test_the_proxy_benchmark_generator_sends_headers_the_server_takes(tmp_path: Path) -> None:
    """benchmarks/proxyload.c, which measures what --proxy-protocol costs:
    with a v1 or v2 header against --proxy-protocol, and with none against
    a plain server, every connection is served (a header the server
    refused would close it, and count as an error)."""
    program = built(ROOT / "benchmarks" / "proxyload.c", tmp_path / "proxyload")
    for flags, header in (((), "0"), (("--proxy-protocol",), "1"), (("--proxy-protocol",), "2")):
        with server_process(*flags) as server:
            run = subprocess.run(
                [str(program), str(server.port), "4", "0.3", "0", header],
                capture_output=True,
                text=True,
                timeout=20,
            )
            result = json.loads(run.stdout)
            assert run.returncode == 0 and result["errors"] == 0, (header, run.stdout, run.stderr)
            assert result["connections"] > 10
