"""Library text names settings; the command line shows them as flags."""

from __future__ import annotations

import logging

import pytest

from eco_trio.cli.servidor import _FlagWords, _in_flag_words
from eco_trio.server.config import ServerConfig, exposure_warning


@pytest.mark.parametrize(
    ("library", "command_line"),
    [
        ("tls_cert and tls_key go together", "--tls-cert and --tls-key go together"),
        ("port must be between 0 and 65535", "--port must be between 0 and 65535"),
        ("limits: max_clients=10, idle_timeout=off", "limits: --max-clients 10, --idle-timeout off"),
        ("already 3 clients (max_clients_per_ip)", "already 3 clients (--max-clients-per-ip)"),
        ("remote_shutdown=False refuses it", "--no-remote-shutdown refuses it"),
        ("or proxy_protocol=True behind a proxy", "or --proxy-protocol behind a proxy"),
        # Words that are also settings stay words unless they carry a value.
        ("the token must be one word", "the token must be one word"),
        ("a client on port 80 and host x", "a client on port 80 and host x"),
    ],
)
def test_settings_become_flags(library: str, command_line: str) -> None:
    assert _in_flag_words(library) == command_line


def test_library_messages_name_settings_not_flags() -> None:
    with pytest.raises(ValueError, match=r"^tls_cert and tls_key go together$"):
        ServerConfig(tls_cert="cert.pem")
    warning = exposure_warning(["192.0.2.1:5000"], ServerConfig())
    assert warning is not None and "--" not in warning and "idle_timeout" in warning


def test_log_lines_are_rewritten_once_formatted() -> None:
    record = logging.LogRecord("eco_trio.server", logging.INFO, __file__, 1, "%s (max_clients)", ("x",), None)
    assert _FlagWords().filter(record)
    assert record.getMessage() == "x (--max-clients)"
    plain = logging.LogRecord(
        "eco_trio.server", logging.INFO, __file__, 1, "connected %s", ("1.2.3.4:5",), None
    )
    assert _FlagWords().filter(plain) and plain.args == ("1.2.3.4:5",)  # untouched
