"""One place that configures logging for every mgpu component.

Call :func:`setup_logging` once at start-up (again to reconfigure: it replaces, never
duplicates, its handler). Modules log through ``get_logger("master")`` →
``logging.getLogger("mgpu.master")``.

Two line formats:

* ``text``: ``2026-11-29T05:09:50.123Z INFO mgpu.master: message`` (UTC, milliseconds);
* ``json``: one object per line, ``{"ts", "level", "component", "logger", "msg"}`` plus
  ``"exc"`` (the formatted traceback) when there is one and any ``extra=`` fields, for log
  collectors.

The handler sits on the root logger, so library records (aiohttp, asyncio) use the same
format. ``aiohttp.access`` logs a line per request at INFO; it is kept to WARNING unless the
level is ``debug``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from typing import Any

from mgpu.core.config import LogConfig
from mgpu.core.errors import ConfigError

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

_MARK = "_mgpu_handler"  # attribute on the handler this module installed
_QUIET_LOGGERS = ("aiohttp.access",)

# Attributes every LogRecord has; anything else came from ``extra=`` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def get_logger(name: str) -> logging.Logger:
    """The logger ``mgpu.<name>``; a name already under ``mgpu`` (``__name__``) is kept."""
    if name == "mgpu" or name.startswith("mgpu."):
        return logging.getLogger(name)
    return logging.getLogger(f"mgpu.{name}")


def format_time(created: float) -> str:
    """``2026-11-29T05:09:50.123Z`` for a record's ``created`` time."""
    whole = int(created)
    millis = int((created - whole) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


class TextFormatter(logging.Formatter):
    """``TS LEVEL logger: message``, then the traceback on the following lines if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{format_time(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage()
        exc = _exception_text(self, record)
        return f"{line}\n{exc}" if exc else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": format_time(record.created),
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        exc = _exception_text(self, record)
        if exc:
            out["exc"] = exc
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in out and not key.startswith("_"):
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


def _exception_text(fmt: logging.Formatter, record: logging.LogRecord) -> str:
    parts: list[str] = []
    if record.exc_info and record.exc_info[0] is not None:
        parts.append(fmt.formatException(record.exc_info))
    if record.stack_info:
        parts.append(fmt.formatStack(record.stack_info))
    return "\n".join(parts)


def setup_logging(cfg: LogConfig, component: str) -> None:
    """Send all log records at ``cfg.level`` or above to ``cfg.file`` (else stderr).

    ``component`` ("master", "node", "client", "up", ...) names the process in JSON lines.
    Idempotent: a second call closes and replaces the handler the first one installed.
    Raises :class:`ConfigError` for an unknown level or format or a log file that cannot be
    opened for appending.
    """
    level_name = str(cfg.level).strip().lower()
    if level_name == "warn":
        level_name = "warning"
    if level_name not in LEVELS:
        raise ConfigError(
            f"unknown log level {cfg.level!r}: use one of {', '.join(LEVELS)} "
            "(MGPU_LOG_LEVEL or [log] level)"
        )
    fmt_name = str(cfg.format).strip().lower()
    if fmt_name not in FORMATS:
        raise ConfigError(
            f"unknown log format {cfg.format!r}: use 'text' or 'json' "
            "(MGPU_LOG_FORMAT or [log] format)"
        )
    level = LEVELS[level_name]

    handler: logging.Handler
    if cfg.file is not None:
        path = cfg.file.expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # WatchedFileHandler reopens the file after logrotate moves it.
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as e:
            raise ConfigError(
                f"cannot open log file {path} for writing: {e.strerror or e} "
                "(fix MGPU_LOG_FILE / [log] file, or unset it to log to stderr)"
            ) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(component) if fmt_name == "json" else TextFormatter()
    )
    handler.setFormatter(formatter)
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("mgpu").setLevel(level)
    quiet = logging.NOTSET if level <= logging.DEBUG else max(level, logging.WARNING)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
