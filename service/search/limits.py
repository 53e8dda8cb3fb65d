"""The limits every query obeys wherever it comes from (issue 12 §2): the URL of a request (checked at the HTTP
edge, service/api/middleware.py), an `If-None-Exist` header, and a Bundle entry's `request.url` and
`request.ifNoneExist` (service/bundle/service.py). Floods of repeated parameters or OR values cost the database
(SQLite refuses a statement with more than 32,766 variables: that was a 500), so they are refused first."""

from fhir_mappings.primitives import CONTROL_RE
from service.errors import BadRequest

#: the query's limits unless the settings say otherwise (TRIAL_FHIR_MAX_PARAM_REPEATS, TRIAL_FHIR_MAX_OR_VALUES)
MAX_PARAM_REPEATS = 100
MAX_OR_VALUES = 500


def check_query(pairs: list[tuple[str, str]], max_repeats: int = MAX_PARAM_REPEATS,
                max_values: int = MAX_OR_VALUES) -> None:
    """The query's hostile shapes, refused with a 400 naming the parameter before anything reads them: a name
    repeated more than `max_repeats` times, a value of more than `max_values` comma-separated (OR) values, a name or
    value holding a control character (not a FHIR string on any database). The value itself is never echoed."""
    seen: dict[str, int] = {}
    for name, value in pairs:
        if CONTROL_RE.search(name) or CONTROL_RE.search(value):
            shown = name if not CONTROL_RE.search(name) else "a parameter"
            raise BadRequest(f"The query parameter {shown!r} holds a control character (only tab, CR and LF are "
                             "allowed in a FHIR string)", expression=CONTROL_RE.sub("?", name))
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > max_repeats:
            raise BadRequest(f"The query parameter {name!r} is repeated more than {max_repeats} times",
                             expression=name)
        if value.count(",") >= max_values:
            raise BadRequest(f"The query parameter {name!r} has more than {max_values} comma-separated values",
                             expression=name)


def may_break_limits(query: str, max_repeats: int = MAX_PARAM_REPEATS, max_values: int = MAX_OR_VALUES) -> bool:
    """Could `query` break a limit? (Cheap: the common short query is not parsed twice.)"""
    return "%" in query or query.count("&") >= max_repeats or query.count(",") >= max_values or \
        bool(CONTROL_RE.search(query))
