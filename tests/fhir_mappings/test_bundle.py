"""Bundles around stored JSON text: entries embedded as they are, optional parts left out, valid R4 Bundles."""

import orjson
import pytest

from fhir_mappings import fhir
from fhir_mappings.bundle import bundle, entry
from tests.data import cases


def _entry(given: dict) -> dict:
    return entry(given["full_url"], given["content"], **given["extra"])


@pytest.mark.parametrize("case", cases("bundle", "entry"))
def test_entry(case):
    assert orjson.loads(orjson.dumps(_entry(case["input"]))) == case["expect"]


@pytest.mark.parametrize("case", cases("bundle", "bundle"))
def test_bundle(case):
    given = case["input"]
    body = bundle(given["type"], [_entry(e) for e in given["entries"]], total=given.get("total"),
                  links=[tuple(link) for link in given.get("links", [])], timestamp=given.get("timestamp"),
                  id=given.get("id"))
    assert orjson.loads(body) == case["expect"]
    fhir.Bundle.model_validate(orjson.loads(body))
