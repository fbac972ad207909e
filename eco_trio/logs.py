"""The server's log: stdlib logging, one line per event, as text or JSON.

Timestamps are ISO 8601 with the UTC offset and milliseconds.  In JSON each
line is one object with ``time``, ``level``, ``message``, and the ``peer``
and ``event`` a record carries (``logging`` ``extra``), so a log shipper
can filter on them without parsing the text.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import TextIO

FORMATS = ("text", "json")


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
            "message": record.getMessage(),
        }
        for key in ("event", "peer", "reason"):
            if (value := getattr(record, key, None)) is not None:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, log_format: str, stream: TextIO) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JSONFormatter() if log_format == "json" else TextFormatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
