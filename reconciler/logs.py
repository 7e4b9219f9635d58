"""Logging set-up shared by every command: ``-v`` for more, ``--log-format json`` for machines.

Loggers are named ``myco.<area>``; context (node, app, instance) travels in ``extra`` and,
for JSON output, becomes fields of the record.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes every LogRecord has; anything else was passed through ``extra`` and is context.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra`` context."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


#: Start-up lines (what a daemon serves, where) are shown at every verbosity.
STARTUP_LOGGER = "myco.startup"


def announce(message: str, *args: object) -> None:
    """Log a daemon's start-up line: shown without ``-v`` (see :func:`configure`)."""
    logging.getLogger(STARTUP_LOGGER).info(message, *args)


def configure(verbosity: int = 0, fmt: str = "text") -> None:
    """Set up the ``myco`` logger tree once for a process.

    ``verbosity`` 0 shows warnings, 1 info, 2 or more debug.
    """
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger("myco")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # A daemon's start-up line says where it serves: shown even at the default level.
    logging.getLogger(STARTUP_LOGGER).setLevel(min(level, logging.INFO))
