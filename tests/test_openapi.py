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


def test_every_search_documents_its_parameters_from_the_registry():
    """Each type's search (GET and the POST form) lists every search parameter of its StoredType, with its FHIR
    type and description, and the result parameters, `_sort` naming exactly the type's sort keys."""
    from service.core.registry import TYPES

    spec = json.loads(render())
    for name, stored_type in TYPES.items():
        search = spec["paths"][f"/fhir/{name}"]["get"]
        documented = {p["name"]: p for p in search["parameters"] if p["in"] == "query"}
        for param_name, param in stored_type.params.items():
            assert param_name in documented, f"{name}: {param_name}"
            assert documented[param_name]["x-fhir-type"] == param.fhir.type
            assert documented[param_name]["description"].startswith(param.fhir.description)
        assert {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements"} <= set(documented)
        sorts = set(documented["_sort"]["schema"]["enum"])
        assert sorts == {k for key in {"_id", "_lastUpdated", *stored_type.sorts} for k in (key, f"-{key}")}
        form = spec["paths"][f"/fhir/{name}/_search"]["post"]["requestBody"]["content"]
        assert set(stored_type.params) <= set(form["application/x-www-form-urlencoded"]["schema"]["properties"])


def test_bodies_refer_to_the_schema_of_their_type():
    """A create's body and answer are the type's schema (generated from its model: resourceType, id, meta and what
    the model requires), a search's answer a Bundle of it."""
    from service.core.registry import TYPES

    spec = json.loads(render())
    schemas = spec["components"]["schemas"]
    for name, stored_type in TYPES.items():
        ref = {"$ref": f"#/components/schemas/{name}"}
        read = spec["paths"][f"/fhir/{name}/{{id}}"]["get"]["responses"]["200"]["content"]["application/fhir+json"]
        assert read["schema"]["$ref"] == ref["$ref"]
        if stored_type.writable:  # (AuditEvent is written by the server only)
            create = spec["paths"][f"/fhir/{name}"]["post"]
            assert create["requestBody"]["content"]["application/fhir+json"]["schema"] == ref
            assert create["responses"]["201"]["content"]["application/fhir+json"]["schema"]["$ref"] == ref["$ref"]
        search = spec["paths"][f"/fhir/{name}"]["get"]["responses"]["200"]["content"]["application/fhir+json"]
        assert search["schema"]["$ref"] == f"#/components/schemas/{name}Bundle"
        schema = schemas[name]
        assert schema["properties"]["resourceType"]["enum"] == [name]
        assert {"resourceType", "id", "meta"} <= set(schema["properties"])
        assert "resourceType" in schema["required"]
    observation = schemas["Observation"]
    assert {"status", "code"} <= set(observation["required"])
    assert observation["properties"]["status"]["enum"] == ["registered", "preliminary", "final", "amended"]
    assert observation["properties"]["valueQuantity"]["title"] == "Quantity"
    assert set(schemas["ResearchSubject"]["required"]) >= {"individual", "study", "status"}


def test_summaries_are_english():
    spec = json.loads(render())
    summaries = {op["summary"] for item in spec["paths"].values() for op in item.values() if isinstance(op, dict)}
    assert {"Create an Observation", "Create a Patient", "Search Observations", "Search ResearchStudies",
            "Read an AdverseEvent", "Create an Encounter"} <= summaries
    assert not [s for s in summaries if " a A" in s or " a E" in s or " a O" in s or " a I" in s or " a U" in s]
    assert not [s for s in summaries if s.endswith(" resources")]


def test_article_and_plural():
    from service.api.docs import article, plural

    assert [article(w) for w in ("Observation", "AdverseEvent", "Patient", "ResearchStudy")] == ["an", "an", "a", "a"]
    assert [plural(w) for w in ("Observation", "ResearchStudy", "Patient", "Day", "Box")] == \
        ["Observations", "ResearchStudies", "Patients", "Days", "Boxes"]
