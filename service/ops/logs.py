"""Structured logs: every line one JSON object (TRIAL_FHIR_LOG_FORMAT=json, the default) or plain text (`text`).

A JSON line holds `timestamp` (UTC, ISO 8601), `level`, `logger`, `event` (the message) and the record's own
fields. The request log (logger `trial_fhir.request`, one line per answered request, written by
service/ops/layer.py) adds `request_id`, `method`, `route` (the route template, never the path: no id, no query),
`status`, `latency_ms`, `client_id` when a token named one, and for a 4xx the first issue of its OperationOutcome
as `issue_code` and `issue_expression` (the element's FHIRPath). Its `diagnostics` are left out: they may repeat
what the client sent (an identifier, a value), and no patient data or token goes to a log (tests/api/
test_log_hygiene.py).

The formatter renders with orjson: structlog's stdlib bridge (ProcessorFormatter) was measured at ~40 µs a line
here against ~13 µs for this, on a path (one line per request) whose whole budget is a few percent of a search's
~140 µs. Handlers are the launcher's business: `trial-fhir serve` passes `uvicorn_log_config()` to uvicorn; under
another launcher (`uvicorn service.main:app`, gunicorn) `install_default_handler` gives the app's loggers one
JSON handler on stderr, unless logging was configured already (root handlers: pytest, a --log-config file).
"""

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

APP_LOGGER = "trial_fhir"
REQUEST_LOGGER = "trial_fhir.request"

#: the attributes every LogRecord has: anything else on a record came from `extra=` and is a field of the line
_STANDARD = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "color_message"}  # (uvicorn's copy of its message with terminal colours)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: timestamp, level, logger, event, the record's `extra=` fields, and the
    formatted traceback (`exception`) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC),  # ISO 8601 by orjson, microseconds, +00:00
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def uvicorn_log_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """The `log_config` `trial-fhir serve` gives uvicorn: uvicorn's own lines and the app's in one format on
    stderr. uvicorn's access log is not used (`access_log=False`): the request log replaces it."""
    name = "json" if log_format == "json" else "text"
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}, "text": {"()": TextFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": name, "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"uvicorn": {"handlers": [], "level": level, "propagate": True},
                    "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
                    "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
                    APP_LOGGER: {"level": level}}}


def install_default_handler(log_format: str) -> None:
    """Give the app's loggers a stderr handler in `log_format` when nothing configured logging (no root handler):
    otherwise their lines would be lost (or, warnings, printed bare by logging's last resort)."""
    app_logger = logging.getLogger(APP_LOGGER)
    if logging.getLogger().handlers or app_logger.handlers:
        if app_logger.level == logging.NOTSET:
            app_logger.setLevel(logging.INFO)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter_for(log_format))
        app_logger.addHandler(handler)
        app_logger.setLevel(logging.INFO)
    lean_records()


def lean_records() -> None:
    """When every handler writes with these formatters, records are made without the thread, process and
    multiprocessing names: no line of ours prints them, and looking them up was a third of a request log line's
    cost (~6 of ~18 µs, bench/ops.py's layer costs). A handler with a formatter of its own (a --log-config file that
    may print %(process)d) keeps them."""
    handlers = [*logging.getLogger().handlers, *logging.getLogger(APP_LOGGER).handlers]
    if handlers and all(isinstance(h.formatter, JsonFormatter | TextFormatter) for h in handlers):
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
