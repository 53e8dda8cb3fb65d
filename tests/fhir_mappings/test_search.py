"""The search parser, pure (no database, no HTTP): what is applied, what is ignored (unknown, lenient) and what is
always refused (malformed values, unsupported modifiers and chains, bad result parameters), issue 11 §4."""

import base64
from datetime import UTC, date, datetime

import orjson
import pytest

from fhir_mappings import fhir
from fhir_mappings.search import (
    Chain,
    Criterion,
    Cursor,
    Include,
    Malformed,
    ParamDef,
    SearchSpec,
    Sort,
    Token,
    common_params,
    decode_cursor,
    encode_cursor,
    parse_search,
)


def _spec(rtype: str, own: list[ParamDef], **kw) -> SearchSpec:
    return SearchSpec(rtype, {p.name: p for p in [*common_params(rtype), *own]}, **kw)


SUBJECT = ParamDef("subject", "reference", "Observation.subject", "", targets=("Patient",))
STUDY = ParamDef("study", "reference", "Observation.study", "", targets=("ResearchStudy",))
INCLUDES = (Include("Observation", "subject", "Patient"), Include("ResearchSubject", "individual", "Patient"),
            Include("ResearchSubject", "study", "ResearchStudy"))
OBSERVATION = _spec("Observation", [
    SUBJECT, STUDY, ParamDef("code", "token", "Observation.code", ""),
    ParamDef("date", "date", "Observation.effective", ""),
    ParamDef("value-quantity", "quantity", "Observation.value", ""),
    ParamDef("focus", "reference", "Observation.focus", "", targets=("Patient", "Group"))],
    sorts=("date",), default_sort="date", includes=INCLUDES[:1], model=fhir.Observation,
    chains={"subject": ("Patient",), "study": ("ResearchStudy",), "focus": ("Patient", "Group")},
    all_includes=INCLUDES)
PATIENT = _spec("Patient", [ParamDef("gender", "token", "Patient.gender", ""),
                            ParamDef("birthdate", "date", "Patient.birthDate", ""),
                            ParamDef("name", "string", "Patient.name", "")],
                includes=INCLUDES[:2])
STUDY_SPEC = _spec("ResearchStudy", [ParamDef("title", "string", "ResearchStudy.title", "")])
GROUP = _spec("Group", [])
SPECS = {s.resource_type: s for s in (OBSERVATION, PATIENT, STUDY_SPEC, GROUP)}


def parse(spec: SearchSpec, query: list[tuple[str, str]]):
    return parse_search(spec, query, lookup=SPECS.get)


#: (parameter, value): each kind of parameter with a malformed value, each unsupported modifier or chain
REFUSED = [
    ("date", "2014-13-45"), ("date", "2024-02-30"), ("date", "tomorrow"), ("date", "ap2024"), ("date", ""),
    ("_lastUpdated", "2024-1-1"), ("value-quantity", "ten"), ("value-quantity", "1|2"), ("value-quantity", "NaN"),
    ("code", "|"), ("code", ""), ("subject", "Patient/"), ("subject", "a b"), ("subject", "Patient/x/y/z"),
    ("subject:Patient", "Group/1"), ("_id", "a/b"), ("_id", "x" * 65),
    ("code:text", "x"), ("code:in", "x"), ("code:below", "x"), ("date:exact", "2024"), ("subject:identifier", "x"),
    ("subject:Group", "1"), ("value-quantity:not", "1"), ("_id:not", "x"), ("code:missing", "maybe"),
    ("code.system", "x"), ("date.x", "1"), ("subject.colour", "x"),
    ("subject.gender:text", "f"), ("subject.birthdate", "1990-13"), ("subject:Group.name", "x"),
    ("subject.identifier.system", "x"), ("focus.identifier", "x"), ("study.title:sounds", "x"),
    ("_has:Observation:subject", "x"), ("_has:Observation:code:code", "x"), ("_has:Nope:subject:code", "x"),
    ("_has:Observation:subject:colour", "x"), ("_has:Observation:subject:_has:Observation:subject:code", "x"),
    ("_has:Observation:study:code", "x"),
    ("_count", "-1"), ("_count", "ten"), ("_count", ""), ("_sort", "code"), ("_sort", ""), ("_sort", "date,,_id"),
    ("_sort", "date,_lastUpdated"), ("_include", "Observation"), ("_include", "Observation:code"),
    ("_include", "*"), ("_revinclude", "Observation:subject"), ("_include:recurse", "Observation:subject"),
    ("_count:exact", "1"), ("_summary", "text"), ("_elements", " , "), ("_elements", "nonsense"), ("_total", "all"),
]


@pytest.mark.parametrize("name, value", REFUSED)
def test_what_cant_be_applied_is_an_error_naming_the_parameter(name, value):
    req = parse(OBSERVATION if not name.startswith("_has") else PATIENT, [("identifier", "x"), (name, value)])
    assert [i.expression for i in req.errors] == [(name,)]
    assert req.errors[0].severity == "error"
    assert not req.warnings
    assert (name, value) not in req.params


@pytest.mark.parametrize("name", ["colour", "title", "name", "gender", "_content", "_text", "colour:exact",
                                  "_query", "_filter"])
def test_an_unknown_parameter_is_a_warning_and_left_out_of_the_applied_parameters(name):
    req = parse(OBSERVATION, [("code", "x"), (name, "y")])
    assert not req.errors
    assert [i.expression for i in req.warnings] == [(name,)] and req.warnings[0].severity == "warning"
    assert req.params == [("code", "x")]
    assert [c.name for c in req.criteria] == ["code"]


def test_malformed_message_names_parameter_and_value():
    req = parse(OBSERVATION, [("date", "2014-13-45")])
    assert "'date'" in req.errors[0].diagnostics and "2014-13-45" in req.errors[0].diagnostics


def test_every_error_is_listed_not_only_the_first():
    req = parse(OBSERVATION, [("date", "x"), ("code:text", "y"), ("_count", "z"), ("colour", "blue")])
    assert [i.expression for i in req.errors] == [("date",), ("code:text",), ("_count",)]
    assert [i.expression for i in req.warnings] == [("colour",)]


@pytest.mark.parametrize("name, value, chain", [
    ("subject.gender", "female", Chain("Patient", "subject", Criterion("gender", "token", None,
                                                                       (Token(None, "female"),)))),
    ("subject:Patient.identifier", "urn:mrn|1", Chain("Patient", "subject", Criterion(
        "identifier", "token", None, (Token("urn:mrn", "1"),)))),
    ("study.identifier", "NCT01234567", Chain("ResearchStudy", "study", Criterion(
        "identifier", "token", None, (Token(None, "NCT01234567"),)))),
    ("subject.name:exact", "Kim", Chain("Patient", "subject", Criterion("name", "string", "exact", ("Kim",)))),
    ("focus:Group._id", "g1", Chain("Group", "focus", Criterion("_id", "token", None, ("g1",)))),
    ("subject.gender:missing", "true", Chain("Patient", "subject", Criterion("gender", "token", "missing", (),
                                                                             missing=True))),
])
def test_chained_parameters_are_parsed_into_a_criterion_on_the_other_type(name, value, chain):
    req = parse(OBSERVATION, [(name, value)])
    assert not req.errors and not req.warnings
    assert [c.chain for c in req.criteria] == [chain]
    assert req.params == [(name, value)]


def test_chain_birthdate_range():
    (crit,) = parse(OBSERVATION, [("subject.birthdate", "ge1990")]).criteria
    assert crit.chain is not None and crit.chain.inner.values[0].prefix == "ge"
    assert crit.chain.inner.values[0].low == datetime(1990, 1, 1, tzinfo=UTC)


def test_chains_need_a_lookup():
    req = parse_search(OBSERVATION, [("subject.gender", "female"), ("code", "x")])  # e.g. an export _typeFilter
    assert [i.expression for i in req.errors] == [("subject.gender",)]


def test_has_is_parsed_into_a_reverse_chain():
    (crit,) = parse(PATIENT, [("_has:Observation:subject:code", "EASI,IGE")]).criteria
    assert crit.chain == Chain("Observation", "subject", Criterion(
        "code", "token", None, (Token(None, "EASI"), Token(None, "IGE"))), reverse=True)


def test_result_parameters():
    req = parse(OBSERVATION, [("_count", "5"), ("_sort", "-date,_id"), ("_total", "accurate"),
                              ("_include", "Observation:subject"), ("_format", "json")])
    assert not req.errors and not req.warnings
    assert (req.count, req.sort, req.total) == (5, Sort("date", True), "accurate")
    assert req.includes == [Include("Observation", "subject", "Patient")]
    assert req.params == [("_count", "5"), ("_sort", "-date,_id"), ("_total", "accurate"),
                          ("_include", "Observation:subject"), ("_format", "json")]


def test_iterate_includes_may_start_from_any_type():
    req = parse(OBSERVATION, [("_include", "Observation:subject"),
                              ("_revinclude:iterate", "ResearchSubject:individual"),
                              ("_include:iterate", "ResearchSubject:study")])
    assert not req.errors
    assert req.includes == [Include("Observation", "subject", "Patient"),
                            Include("ResearchSubject", "study", "ResearchStudy", iterate=True)]
    assert req.revincludes == [Include("ResearchSubject", "individual", "Patient", iterate=True)]


@pytest.mark.parametrize("value", [None, datetime(2024, 1, 10, 9, 30, tzinfo=UTC), date(1990, 1, 1), 12.5, 3,
                                   "moderate", ""])
def test_cursor_round_trips_every_kind_of_sort_value(value):
    cursor = Cursor("value-quantity", True, 0, value, "abc-1")
    back = decode_cursor(encode_cursor(cursor))
    assert back == cursor and type(back.value) is (float if isinstance(value, int) else type(value))


@pytest.mark.parametrize("data", [["date", 0, 0, "2024-01-10T00:00:00", "x"], ["d", 0, 0, {"d": 5}, "x"],
                                  ["d", 0, 0, {"n": True}, "x"], ["d", 0, 0, {"s": 1}, "x"],
                                  ["d", 0, 0, {"x": "1"}, "x"], ["d", 0, 0, {"d": "1990-13-01"}, "x"],
                                  ["d", 0, 0, {"s": "a", "n": 1}, "x"], ["d", 0, 0, [1], "x"],
                                  ["d", 0, 2, None, "end"], ["d", 1, 3, None, "x"]])
def test_a_cursor_this_server_did_not_write_is_refused(data):
    text = base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")
    with pytest.raises(Malformed):
        decode_cursor(text)
