"""FHIR R4 primitive types in JSON (hl7.org/fhir/R4/datatypes.html, json.html): the JSON type each one takes and
the regular expression its value matches, as one check per type that answers None or the problem in our words.

| FHIR type                        | JSON         | value (R4)                                                        |
|----------------------------------|--------------|-------------------------------------------------------------------|
| boolean                          | true / false |                                                                   |
| integer                          | number       | whole, no fraction or exponent, -2,147,483,648 .. 2,147,483,647   |
| unsignedInt / positiveInt        | number       | as integer, >= 0 / >= 1                                           |
| decimal                          | number       | never a string                                                    |
| string, markdown                 | string       | no control characters but tab, CR and LF; at most 1 MB            |
| code                             | string       | no leading, trailing or repeated whitespace                       |
| id                               | string       | `[A-Za-z0-9\\-.]{1,64}`                                           |
| uri, url, canonical              | string       | no whitespace                                                     |
| oid / uuid                       | string       | `urn:oid:` + dotted numbers / `urn:uuid:` + lower-case UUID       |
| date / dateTime / instant / time | string       | R4's regexes, real calendar days; a time of day has seconds and   |
|                                  |              | (dateTime, instant) a UTC offset                                  |
| base64Binary                     | string       | base64 (RFC 4648; R4's regex forgets `/`, which is allowed here)  |
| xhtml (Narrative.div)            | string       | no control characters; the XHTML itself is not checked here       |
"""

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any


def whole_number(text: str) -> bool:
    """Is `text` a whole number ≥ 0 in ASCII digits? (`str.isdigit` alone is not enough: '²'.isdigit() is true and
    int() refuses it, and int('١٠') is 10.)"""
    return text.isascii() and text.isdigit()


MAX_STRING = 1024 * 1024  # R4: a string SHALL NOT exceed 1 MB
INT32 = (-(2**31), 2**31 - 1)

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_ZONE = r"(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DAY = r"-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
DATE_RE = re.compile(rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?")
DATETIME_RE = re.compile(rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T{_TIME}{_ZONE})?)?)?")
INSTANT_RE = re.compile(rf"{_YEAR}{_DAY}T{_TIME}{_ZONE}")
TIME_RE = re.compile(_TIME)
CODE_RE = re.compile(r"[^\s]+(\s[^\s]+)*")
ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
URI_RE = re.compile(r"\S*")
OID_RE = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
UUID_RE = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BASE64_RE = re.compile(r"\s*([0-9a-zA-Z+/=]\s*){4}(\s*([0-9a-zA-Z+/=]\s*){4})*")
#: below U+0020, only tab, LF and CR may be in a FHIR string
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")

Check = Callable[[Any], "str | None"]


def _text(kind: str, pattern: "re.Pattern[str] | None", form: str, *, limit: bool = False,
          calendar: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"A FHIR {kind} is a JSON string, not {json_type(value)}"
        if not value.isprintable() and CONTROL_RE.search(value):
            return f"This {kind} holds a control character (only tab, CR and LF are allowed)"
        if limit and len(value) > MAX_STRING:
            return f"This {kind} is longer than 1 MB"
        if pattern is not None and not pattern.fullmatch(value):
            return f"'{_short(value)}' is not a valid FHIR {kind}: {form}"
        if calendar and len(value) >= 10 and not _real_day(value):
            return f"'{_short(value)}' is not a valid FHIR {kind}: there is no such day"
        if calendar and len(value) > 10 and not _storable(value):
            return f"'{_short(value)}' is outside the dates this server stores (years 0001 to 9999, in UTC)"
        return None
    return check


def _integer(kind: str, low: int, high: int = INT32[1]) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"A FHIR {kind} is a JSON number, not {json_type(value)}"
        if isinstance(value, float):
            return f"A FHIR {kind} is a whole JSON number, without a fraction or exponent: {value!r}"
        if not low <= value <= high:
            return f"{value} is out of range for a FHIR {kind} ({low} to {high})"
        return None
    return check


def _decimal(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"A FHIR decimal is a JSON number, not {json_type(value)}"
    return None


def _boolean(value: Any) -> str | None:
    if not isinstance(value, bool):
        return f"A FHIR boolean is JSON true or false, not {json_type(value)}"
    return None


def _real_day(value: str) -> bool:
    try:
        date(int(value[:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


def _storable(value: str) -> bool:
    """Is a dateTime/instant with a time of day still in years 0001..9999 once in UTC (what Python's datetime and
    both databases hold)? 9999-12-31T23:59:59-14:00 is in year 10000 there, 0001-01-01T00:00:00+14:00 in year 0.
    A leap second (:60) is read as :59."""
    try:
        text = value.replace("Z", "+00:00")
        moment = datetime.fromisoformat(text[:17] + "59" + text[19:] if text[17:19] == "60" else text)
        if moment.tzinfo is not None:
            moment.astimezone(UTC)
    except OverflowError:
        return False
    except ValueError:  # a form the regex took that fromisoformat doesn't: not a range question
        return True
    return True


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string '{_short(value)}'"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "null"


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


#: FHIR primitive type name -> its check (None: fine)
CHECKS: dict[str, Check] = {
    "boolean": _boolean,
    "integer": _integer("integer", INT32[0]),
    "unsignedInt": _integer("unsignedInt", 0),
    "positiveInt": _integer("positiveInt", 1),
    "integer64": _integer("integer64", -(2**63), 2**63 - 1),
    "decimal": _decimal,
    "string": _text("string", None, "", limit=True),
    "markdown": _text("markdown", None, "", limit=True),
    "xhtml": _text("xhtml", None, ""),
    "code": _text("code", CODE_RE, "no leading, trailing or repeated whitespace"),
    "id": _text("id", ID_RE, "1 to 64 letters, digits, '-' and '.'"),
    "uri": _text("uri", URI_RE, "no whitespace"),
    "url": _text("url", URI_RE, "no whitespace"),
    "canonical": _text("canonical", URI_RE, "no whitespace"),
    "oid": _text("oid", OID_RE, "urn:oid: and dotted numbers, e.g. urn:oid:1.2.3"),
    "uuid": _text("uuid", UUID_RE, "urn:uuid: and a lower-case UUID"),
    "date": _text("date", DATE_RE, "YYYY, YYYY-MM or YYYY-MM-DD, no time", calendar=True),
    "dateTime": _text("dateTime", DATETIME_RE,
                      "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a UTC offset (Z or +hh:mm)",
                      calendar=True),
    "instant": _text("instant", INSTANT_RE, "YYYY-MM-DDThh:mm:ss with a UTC offset (Z or +hh:mm)", calendar=True),
    "time": _text("time", TIME_RE, "hh:mm:ss, no UTC offset"),
    "base64Binary": _text("base64Binary", BASE64_RE, "base64 in groups of 4 characters"),
}


def primitive_issue(kind: str, value: Any) -> str | None:
    """The problem with `value` as a FHIR `kind` (e.g. 'dateTime'), or None when it is one."""
    check = CHECKS.get(kind)
    return check(value) if check is not None else None
