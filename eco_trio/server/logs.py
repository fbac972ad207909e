"""The server's log: stdlib logging, one line per event, as text or JSON,
written by a thread of its own so that it can never stop the server.

Timestamps are ISO 8601 with the UTC offset and milliseconds.  In JSON each
line is one object with ``time``, ``level``, ``message``, and the ``peer``
and ``event`` a record carries (``logging`` ``extra``), so a log shipper
can filter on them without parsing the text.

Why a thread: a write to stderr blocks when stderr is a pipe nobody reads or
a terminal paused with Ctrl-S, and a write on the event loop would then stop
every connection (and the signal handling with it).  So, as HAProxy logs
through a ring it never waits on, records go into a bounded queue
(:class:`logging.handlers.QueueHandler`) and one writer thread takes them
out and writes them to the file descriptor.  When the queue is full the
record is dropped and counted (:func:`dropped_lines`, shown in ESTADO and
the metrics); once the writer catches up it logs how many it lost.  At exit
the writer gets a short while to finish, and no more: a stuck stderr does
not hold the shutdown.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import queue
import threading
from typing import Final, TextIO

FORMATS = ("text", "json")

#: Records the queue holds while the writer is behind (a few MiB at most).
QUEUE_SIZE: Final = 4096
#: How long shutdown lets the writer finish what is queued.
STOP_WAIT: Final = 1.0


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname,
            # Every record has an event to filter on; those that name none
            # are plain log lines.
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
        }
        for key in ("peer", "reason", "worker"):
            if (value := getattr(record, key, None)) is not None:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


class _Named(logging.Filter):
    """Every record carries the worker's name (JSON's ``worker`` field)."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


class _Drops:
    """Records lost because the queue was full: the total (for ESTADO) and
    how many the writer has not yet reported in the log."""

    def __init__(self) -> None:
        self.total = 0
        self.reported = 0


_drops = _Drops()


def dropped_lines() -> int:
    """Log records dropped so far because the log's reader fell behind."""
    return _drops.total


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Never waits: a full queue drops the record and counts it."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _drops.total += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message is merged here, while its arguments are as they were;
        # the formatting (time, JSON) is left to the writer thread.
        record.msg, record.args = record.getMessage(), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        return record


class _Writer:
    """The thread that writes queued records to a file descriptor."""

    def __init__(self, fd: int, formatter: logging.Formatter) -> None:
        self.records: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUE_SIZE)
        self._fd = fd
        self._formatter = formatter
        self._thread = threading.Thread(target=self._run, name="eco_trio log writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (record := self.records.get()) is not None:
            lost = _drops.total - _drops.reported
            if lost and self.records.empty():  # caught up: say what was lost
                _drops.reported += lost
                self._write(self._lost_record(lost, record))
            self._write(record)

    def _lost_record(self, lost: int, after: logging.LogRecord) -> logging.LogRecord:
        record = logging.LogRecord(
            "eco_trio.logs", logging.WARNING, __file__, 0,
            "%d log lines dropped: the log's reader fell behind", (lost,), None,
        )  # fmt: skip
        record.created = after.created
        return record

    def _write(self, record: logging.LogRecord) -> None:
        try:
            data = (self._formatter.format(record) + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # stderr closed under us: nothing left to tell

    def stop(self, wait: float = STOP_WAIT) -> None:
        """Let the writer finish what is queued, for at most ``wait`` seconds."""
        try:
            self.records.put(None, timeout=wait)
        except queue.Full:
            return
        self._thread.join(wait)


_writer: _Writer | None = None


def configure(
    level: str,
    log_format: str,
    stream: TextIO | None,
    *,
    rewrite: logging.Filter | None = None,
    worker: str | None = None,
) -> None:
    """Log at ``level`` to ``stream``'s file descriptor through a writer
    thread.  With no stream (the server was started with stderr closed),
    records are dropped silently.  ``rewrite``, if given, may change each
    record's text before it is queued (the command line names flags)."""
    global _writer
    # A worker of ``servidor --workers`` names itself on every line.
    text = "%(asctime)s %(levelname)s " + (f"[{worker}] " if worker else "") + "%(message)s"
    formatter = JSONFormatter() if log_format == "json" else TextFormatter(text)
    root = logging.getLogger()
    root.setLevel(level)
    stop()
    fd = _file_descriptor(stream)
    if fd is None:
        root.handlers[:] = [logging.NullHandler()]
        return
    _writer = _Writer(fd, formatter)
    handler = _DroppingQueueHandler(_writer.records)
    if rewrite is not None:
        handler.addFilter(rewrite)
    if worker is not None:
        handler.addFilter(_Named(worker))
    root.handlers[:] = [handler]


def stop() -> None:
    """Flush the log (briefly: a stuck stderr is given up on) and stop the
    writer thread."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def _file_descriptor(stream: TextIO | None) -> int | None:
    if stream is None:
        return None
    try:
        stream.flush()
        fd = stream.fileno()
        os.fstat(fd)
    except (OSError, ValueError):
        return None
    return fd
