"""The committed OpenAPI document is the app's, and it documents every operation with examples."""

import json
from pathlib import Path

from service.export_openapi import TARGET, render

METHODS = {"get", "post", "put", "delete", "patch"}


def test_committed_openapi_matches_app():
    committed = Path(TARGET).read_text()
    assert json.loads(committed) == json.loads(render()), \
        "openapi/openapi.json is out of date: run `python -m service.export_openapi` and commit it"


def _has_example(node) -> bool:
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        return any(_has_example(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_example(v) for v in node)
    return False


def test_every_fhir_operation_has_a_description_and_examples():
    spec = json.loads(render())
    missing = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            if not op.get("description") or not op.get("summary"):
                missing.append(f"{where}: description")
            if "requestBody" in op and not _has_example(op["requestBody"]):
                missing.append(f"{where}: request example")
            ok = [r for code, r in op["responses"].items() if code.startswith("2")]
            if path.startswith("/fhir") and not any(_has_example(r) for r in ok) and \
                    not all(code == "204" for code in op["responses"] if code.startswith("2")):
                missing.append(f"{where}: response example")
            if path.startswith("/fhir") and "422" in op["responses"]:
                assert "HTTPValidationError" not in json.dumps(op["responses"]["422"]), where
    assert not missing, missing
