"""Operation inputs from the query and a Parameters body, pure."""

import pytest

from fhir_mappings.parameters import ParametersInvalid, operation_inputs, parameters, single


def test_inputs_from_query_and_parameters():
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "code", "valueCode": "EASI"}, {"name": "resource", "resource": {"resourceType": "Patient"}},
        {"name": "coding", "valueCoding": {"system": "s", "code": "c"}}, {"name": "count", "valueInteger": 3},
        {"name": "codeableConcept", "valueCodeableConcept": {"text": "t"}}]}
    inputs = operation_inputs([("system", "http://x")], body)
    assert inputs == [("system", "http://x", "system"), ("code", "EASI", "Parameters.parameter[0]"),
                      ("resource", {"resourceType": "Patient"}, "Parameters.parameter[1]"),
                      ("coding", {"system": "s", "code": "c"}, "Parameters.parameter[2]"),
                      ("count", 3, "Parameters.parameter[3]"),
                      ("codeableConcept", {"text": "t"}, "Parameters.parameter[4]")]
    assert single(inputs, "code") == ("EASI", "Parameters.parameter[0]")
    assert single(inputs, "count", int) == (3, "Parameters.parameter[3]")
    assert single(inputs, "absent") == (None, "absent")


@pytest.mark.parametrize(("body", "expression"), [
    ({"resourceType": "Patient"}, "Parameters"),
    ({"resourceType": "Parameters", "parameter": [{"valueCode": "x"}]}, "Parameters.parameter[0].name"),
    ({"resourceType": "Parameters", "parameter": [{"name": "code"}]}, "Parameters.parameter[0]"),
])
def test_malformed_parameters_name_the_parameter(body, expression):
    with pytest.raises(ParametersInvalid) as caught:
        operation_inputs([], body)
    assert caught.value.expression == expression


def test_single_refuses_repeats_and_wrong_types():
    inputs = [("code", "a", "code"), ("code", "b", "Parameters.parameter[0]"), ("count", True, "count")]
    with pytest.raises(ParametersInvalid) as twice:
        single(inputs, "code")
    assert twice.value.expression == "Parameters.parameter[0]"
    with pytest.raises(ParametersInvalid):
        single(inputs, "count", int)  # a boolean is no integer


def test_parameters_builds_values_and_parts_leaving_out_none():
    built = parameters(("name", "valueString", "ad-scores"), ("version", "valueString", None),
                       ("designation", "part", [("value", "valueString", "Eczema Area")]))
    assert built == {"resourceType": "Parameters", "parameter": [
        {"name": "name", "valueString": "ad-scores"},
        {"name": "designation", "part": [{"name": "value", "valueString": "Eczema Area"}]}]}
