"""References read without I/O: every form a client may send, classified by `parse_reference`."""

import pytest

from fhir_mappings.references import ParsedReference, parse_reference, split_token
from tests.data import cases


def _expected(expect: dict) -> ParsedReference:
    fields = dict(expect)
    fields["query"] = tuple(tuple(pair) for pair in fields.get("query", ()))
    if fields.get("identifier") is not None:
        fields["identifier"] = tuple(fields["identifier"])
    return ParsedReference(**fields)


@pytest.mark.parametrize("case", cases("references", "parse_reference"))
def test_parse_reference(case):
    assert parse_reference(case["input"], **case.get("args", {})) == _expected(case["expect"])


@pytest.mark.parametrize("case", cases("references", "split_token"))
def test_split_token(case):
    assert list(split_token(case["input"])) == case["expect"]
