"""Chained parameters, `_has` and conditional criteria never reach past the caller's scopes and studies
(issue 11 §4 d, §6): a chain reads the other type only where a search of it could."""

import asyncio

import orjson
import pytest

from service.auth.scopes import parse_scopes
from service.core.context import Caller, Context
from service.errors import BadRequest, Forbidden
from tests.factories import adverse_event, observation, patient, study, subject

BASE = "https://fhir.example.org/fhir"
ADMIN = Context(BASE)


def ctx(scopes: str, studies: tuple[str, ...] | None = None) -> Context:
    return Context(BASE, Caller("client-1", parse_scopes(scopes), frozenset(studies) if studies is not None
                                else None))


def run(coroutine):
    return asyncio.run(coroutine)


def ids_of(bundle: bytes) -> set[str]:
    return {e["resource"]["id"] for e in orjson.loads(bundle).get("entry", []) if e["search"]["mode"] == "match"}


@pytest.fixture
def scene(core) -> dict[str, str]:
    """Studies A and B (B with an NCT number); patient `both` enrolled in A and B with a serious adverse event in B
    only; patient `only_b` in B."""
    found = {"A": run(core.create(ADMIN, "ResearchStudy", study(title="Study A"))).id,
             "B": run(core.create(ADMIN, "ResearchStudy", study(
                 title="Study B", identifier=[{"system": "urn:nct", "value": "NCT0000000B"}]))).id}
    found["both"] = run(core.create(ADMIN, "Patient", patient("MRN-BOTH"))).id
    found["only_b"] = run(core.create(ADMIN, "Patient", patient("MRN-ONLY-B"))).id
    for st, p in (("A", "both"), ("B", "both"), ("B", "only_b")):
        run(core.create(ADMIN, "ResearchSubject", subject(found[st], found[p])))
    found["ae_b"] = run(core.create(ADMIN, "AdverseEvent", adverse_event(found["both"], found["B"],
                                                                         serious=True))).id
    found["obs_b"] = run(core.create(ADMIN, "Observation", observation(
        found["only_b"], extension=[{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy",
                                     "valueReference": {"reference": f"ResearchStudy/{found['B']}"}}]))).id
    return found


def test_has_reads_only_the_callers_studies(core, scene):
    query = [("_has:AdverseEvent:subject:seriousness", "serious")]
    assert ids_of(run(core.search(ADMIN, "Patient", query))) == {scene["both"]}
    in_b = ctx("system/Patient.rs system/AdverseEvent.rs", (scene["B"],))
    assert ids_of(run(core.search(in_b, "Patient", query))) == {scene["both"]}
    in_a = ctx("system/Patient.rs system/AdverseEvent.rs", (scene["A"],))
    # `both` is a patient of A, but its serious event is B's: a caller of A must not learn of it
    assert ids_of(run(core.search(in_a, "Patient", query))) == set()
    assert ids_of(run(core.search(in_a, "Patient", []))) == {scene["both"]}


def test_chain_needs_a_search_scope_on_the_other_type(core, scene):
    reader = ctx("system/Observation.rs system/AdverseEvent.rs")
    with pytest.raises(Forbidden, match=r"system/Patient\.s"):
        run(core.search(reader, "Observation", [("patient.identifier", "MRN-ONLY-B")]))
    with pytest.raises(Forbidden, match=r"system/AdverseEvent\.s"):
        run(core.search(ctx("system/Patient.rs"), "Patient", [("_has:AdverseEvent:subject:severity", "mild")]))
    full = ctx("system/Observation.rs system/Patient.rs system/ResearchStudy.rs")
    assert ids_of(run(core.search(full, "Observation", [("patient.identifier", "MRN-ONLY-B")]))) == {scene["obs_b"]}
    assert ids_of(run(core.search(full, "Observation", [("study.identifier", "NCT0000000B")]))) == {scene["obs_b"]}


def test_chain_through_a_study_the_caller_cant_see_finds_nothing(core, scene):
    in_a = ctx("system/Observation.rs system/Patient.rs system/ResearchStudy.rs system/AdverseEvent.rs", (scene["A"],))
    assert ids_of(run(core.search(in_a, "Observation", [("study.identifier", "NCT0000000B")]))) == set()
    assert ids_of(run(core.search(in_a, "AdverseEvent", [("subject.identifier", "MRN-BOTH")]))) == set()


def test_study_url_registry_number_resolves_only_among_the_callers_studies(core, scene):
    figures = "system/Observation.r system/AdverseEvent.r system/ResearchSubject.r system/ResearchStudy.r"
    assert run(core.resolve_study_id(ADMIN, "NCT0000000B")) == scene["B"]
    assert run(core.resolve_study_id(ctx(figures, (scene["B"],)), "NCT0000000B")) == scene["B"]
    assert run(core.resolve_study_id(ctx(figures, (scene["A"],)), "NCT0000000B")) == "NCT0000000B"  # names nothing
    assert run(core.resolve_study_id(ADMIN, scene["A"])) == scene["A"]


def test_conditional_match_in_another_study_is_refused_not_taken_for_none(core, scene):
    in_a = ctx("system/Observation.cruds system/Patient.rs", (scene["A"],))
    with pytest.raises(Forbidden):
        run(core.conditional_delete(in_a, "Observation", f"subject={scene['only_b']}"))
    with pytest.raises(Forbidden):  # not a second Observation written beside the one it can't see
        run(core.conditional_update(in_a, "Observation", "patient.identifier=MRN-ONLY-B",
                                    observation(scene["only_b"])))
    assert run(core.read(ADMIN, "Observation", scene["obs_b"])).version_id == 1
    # a chain in the criteria reads only the caller's studies: MRN-ONLY-B is no patient of A, so nothing matches
    # and the create is checked as any create (the patient is not enrolled in A: refused)
    with pytest.raises(Forbidden):
        run(core.create(in_a, "Observation", observation(scene["only_b"]),
                        if_none_exist="patient.identifier=MRN-ONLY-B"))


@pytest.mark.parametrize("rtype, name, value", [
    ("Observation", "subject.identifier", "MRN-ONLY-B"), ("Observation", "patient:Patient.birthdate", "1990-01-01"),
    ("AdverseEvent", "subject.gender", "female"), ("Patient", "_has:AdverseEvent:subject:date", "2024-01-20"),
    ("Patient", "_has:Observation:patient:code", "EASI")])
def test_de_identified_clients_cant_search_through_chains(core, scene, rtype, name, value):
    deid = Context(BASE, Caller("research-1", parse_scopes("system/*.rs"), None, deidentified=True))
    with pytest.raises(BadRequest) as refused:
        run(core.search(deid, rtype, [(name, value)]))
    assert refused.value.issues[0].expression == (name,)
