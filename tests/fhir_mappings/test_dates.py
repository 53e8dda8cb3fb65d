"""FHIR date/dateTime strings: the instant in UTC and the local date as written (visits count local dates)."""

from datetime import datetime

import pytest

from fhir_mappings.dates import fhir_instant, parse_date, parse_datetime
from tests.data import cases


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


@pytest.mark.parametrize("case", cases("dates", "parse_datetime"))
def test_parse_datetime(case):
    instant, local = parse_datetime(case["input"])
    assert {"instant": _iso(instant), "local": _iso(local)} == case["expect"]
    if instant is not None:
        assert instant.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("case", cases("dates", "parse_date"))
def test_parse_date(case):
    assert _iso(parse_date(case["input"])) == case["expect"]


@pytest.mark.parametrize("case", cases("dates", "fhir_instant"))
def test_fhir_instant(case):
    assert fhir_instant(datetime.fromisoformat(case["input"])) == case["expect"]
