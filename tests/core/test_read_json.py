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


@pytest.mark.parametrize(("text", "message"), [
    (b"", "Malformed JSON: it is empty (line 1, column 1)"),
    (b'{"resourceType": "Patient"', "Malformed JSON: it ends before the JSON does (line 1, column 27)"),
    (b'{"active": tru}', "Malformed JSON: a value that is not a JSON value (line 1, column 12)"),
    (b'{"active": true,}', "Malformed JSON: a comma before a closing bracket (line 1, column 16)"),
    (b'{"active" true}', "Malformed JSON: a character JSON does not allow there (line 1, column 11)"),
    (b"\xff", "Malformed JSON: it is not UTF-8 text (line 1, column 1)"),
    (b"{\n  'a': 1}", "Malformed JSON: a name that is not a double-quoted string (line 2, column 3)"),
])
def test_malformed_json_is_said_in_our_words_with_where(text, message):
    with pytest.raises(ResourceInvalid) as refused:
        read_json(text)
    assert str(refused.value) == message
    assert refused.value.issues[0].expression == ("body",)
