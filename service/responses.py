"""FHIR JSON responses: stored JSON text is sent as it is, dicts through orjson."""

from typing import Any

import orjson
from starlette.responses import Response

FHIR_JSON = "application/fhir+json"


class FhirJSONResponse(Response):
    """`application/fhir+json` (or `application/json`, see FormatMiddleware) from a dict or ready JSON bytes."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        if isinstance(content, str):
            return content.encode()
        return orjson.dumps(content)
