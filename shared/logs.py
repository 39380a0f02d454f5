"""Logging for the API and the worker: plain text or one JSON object per line, with the
request id and task id of the work being done on every line.

Text lines escape control characters in messages (a request path with ``%0a`` in it would
otherwise write a forged line of its own): a line break is ``\\n``, a backslash ``\\\\``, any
other control character ``\\xNN``/``\\uNNNN``. Tracebacks stay on lines of their own. JSON
lines need nothing more: the JSON encoder escapes every control character.

The API takes a request's id from its ``X-Request-Id`` header (or makes one), keeps it in
the task record, and the worker puts it back in context while it runs the task: one id
follows an upload from the HTTP request to the worker's log lines.
"""

import logging
import re
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
task_id: ContextVar[str | None] = ContextVar("task_id", default=None)

# What a caller's X-Request-Id may be; anything else is replaced by one of ours.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s task=%(task_id)s]: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(task_id)s"


# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators; and the backslash,
# so that an escape written by a caller cannot pass for one of ours.
_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters (and backslashes) written as escapes."""
    def escape(match: re.Match) -> str:
        char = match.group()
        return _NAMED_ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")

    return _UNSAFE.sub(escape, text)


class TextFormatter(logging.Formatter):
    """The text format, with each message kept on its own line (see the module's docstring)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape_controls(record.message)
        return super().formatMessage(safe)


class ContextFilter(logging.Filter):
    """Adds the current request id and task id to every record."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.task_id = task_id.get()
        record.service = self.service
        return True


def configure_logging(service: str, log_format: str, level: str = "INFO") -> None:
    """Route every logger (Celery's and gunicorn's included) through one handler on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter(service))
    if log_format == "json":
        handler.setFormatter(JsonFormatter(JSON_FIELDS + " %(service)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    # Replace an earlier handler of ours or a bare stderr one (basicConfig's), which would
    # print every line twice; keep others (pytest's capture handlers, for one).
    root.handlers[:] = [existing for existing in root.handlers if type(existing) is not logging.StreamHandler]
    root.addHandler(handler)
    root.setLevel(level)
