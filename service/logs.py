"""Log hygiene: no secret, token, identifier or patient value in a log line.

The access log is the one that sees every request: uvicorn writes the path with its whole query string, and a
FHIR search carries patient identifiers there (`?identifier=urn:oid:…|MRN-000124`). `quiet_access_log()` puts a
filter on the `uvicorn.access` logger that keeps the parameter names and elides their values
(`?identifier=…&_count=…`). It is installed when the app is built (`create_app`), so it covers every way the app
is launched: `trial-fhir serve`, `python -m service`, `uvicorn service.main:app`, gunicorn with uvicorn workers.
uvicorn logs no request headers, so the Authorization header never reaches a log.

Bound SQL parameters stay out of tracebacks too: engines are made with `hide_parameters=True` (service/db.py).
"""

import logging
import re

ACCESS_LOGGER = "uvicorn.access"
ELIDED = "…"
#: a parameter name as FHIR search writes them (`subject:Patient.identifier`, `_count`, `value-quantity`); any other
#: "name" may be a value sent without `=`, and is elided too
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def elide_query(target: str) -> str:
    """`/fhir/Patient?identifier=x|MRN-1&_count=5` -> `/fhir/Patient?identifier=…&_count=…`."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    parts = (part.partition("=") for part in query.split("&") if part)
    return path + "?" + "&".join(f"{name}={ELIDED}" if equals and _NAME.fullmatch(name) else ELIDED
                                 for name, equals, _ in parts)


class ElideQueryValues(logging.Filter):
    """Rewrites uvicorn's access record (client, method, path with query, HTTP version, status), whose message
    its formatters build from `record.args`, with the query's values elided."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], elide_query(args[2]), *args[3:])
        return True


def quiet_access_log() -> None:
    """Install `ElideQueryValues` on uvicorn's access logger (once per process)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, ElideQueryValues) for f in logger.filters):
        logger.addFilter(ElideQueryValues())
