"""`read_json`: the one reader of JSON resources for every ingest source (HTTP bodies, files, EHR answers)."""

import pytest

from service.core.resources import read_json
from service.errors import ResourceInvalid


def test_read_json_returns_the_document():
    assert read_json(b'{"resourceType": "Patient", "gender": "male"}') == {"resourceType": "Patient",
                                                                          "gender": "male"}
    assert read_json('{"resourceType": "Patient"}') == {"resourceType": "Patient"}


def test_read_json_names_every_repeated_name():
    with pytest.raises(ResourceInvalid) as caught:
        read_json(b'{"resourceType": "Patient", "gender": "male", "name": [{"family": "A", "family": "B"}], '
                  b'"gender": "female"}')
    assert caught.value.status_code == 400
    assert sorted(e for i in caught.value.issues for e in i.expression) == ["Patient.gender", "Patient.name[0].family"]


def test_read_json_refuses_malformed_json():
    with pytest.raises(ResourceInvalid) as caught:
        read_json(b'{"resourceType": "Patient",')
    assert caught.value.issues[0].expression == ("body",)
