"""FHIR references, read without I/O: literal, absolute, `urn:uuid:`, conditional and logical (identifier).

| form sent by the client                         | `ParsedReference`                         |
|-------------------------------------------------|-------------------------------------------|
| `Patient/123` or `<base>/Patient/123[/_history/n]` | kind `literal`, type, id               |
| `urn:uuid:…` (transaction entries)              | kind `placeholder`, the whole urn         |
| `Patient?identifier=system\\|value`              | kind `conditional`, type, query           |
| `{"identifier": {"system": …, "value": …}}`     | kind `identifier`, type, (system, value)  |
| anything else (other servers, `#contained`)     | kind `external`                           |
"""

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_LITERAL_RE = re.compile(r"^(?:(?P<base>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


@dataclass(frozen=True, slots=True)
class ParsedReference:
    kind: str  # literal | placeholder | conditional | identifier | external | empty
    resource_type: str | None = None
    id: str | None = None
    base: str | None = None
    query: tuple[tuple[str, str], ...] = ()
    identifier: tuple[str, str] | None = None
    text: str = ""


def parse_reference(ref: dict[str, Any] | None, expected_type: str | None = None) -> ParsedReference:
    """Classify a Reference element (a dict as received)."""
    if not isinstance(ref, dict):
        return ParsedReference("empty")
    value = ref.get("reference")
    if isinstance(value, str) and value:
        if value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
            return ParsedReference("placeholder", ref.get("type") or expected_type, text=value)
        if "?" in value and not value.startswith("http"):
            rtype, _, qs = value.partition("?")
            return ParsedReference("conditional", rtype, query=tuple(parse_qsl(qs, keep_blank_values=True)), text=value)
        m = _LITERAL_RE.match(value)
        if m:
            return ParsedReference("literal", m["type"], m["id"], base=m["base"], text=value)
        return ParsedReference("external", text=value)
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return ParsedReference("identifier", ref.get("type") or expected_type,
                               identifier=(ident.get("system") or "", str(ident["value"])))
    return ParsedReference("empty")


def split_token(token: str) -> tuple[str | None, str]:
    """`system|value` -> (system, value); `|value` -> ('', value); `value` -> (None, value)."""
    if "|" in token:
        system, _, value = token.partition("|")
        return system, value
    return None, token
