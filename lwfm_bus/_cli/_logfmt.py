"""How the CLI logs: text lines (the default), or one JSON object per line (``--log-format json``).

JSON is for log shippers (Loki, Elasticsearch, journald's JSON view): every line of stderr
is one object with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and
``exc_info`` (the traceback text) when there is one.  Messages are the same as in text
mode, which never carry a secret's value.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

__all__ = ["JsonFormatter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(verbose: int, log_format: Literal["text", "json"] = "text") -> None:
    """The root handler on stderr; ``-v`` INFO, ``-vv`` DEBUG.

    In JSON mode the CLI's own status lines (``lwfm_bus.cli``, at INFO) pass at any
    verbosity: they replace the plain lines that would break one-object-per-line.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler])
        cli = logging.getLogger("lwfm_bus.cli")
        cli.setLevel(min(level, logging.INFO))
    else:
        logging.basicConfig(level=level, format=TEXT_FORMAT, stream=sys.stderr)
