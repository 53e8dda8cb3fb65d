"""Access decided in the core (service/core/access.py), called with no HTTP: scopes decide the interaction, a
caller's studies decide the rows, on every path (read, vread, history, search and its includes, conditional
writes, transaction and batch entries, Group, the study's figures). Both databases."""

import asyncio

import orjson
import pytest

from service.auth.scopes import parse_scopes
from service.core.context import Caller, Context
from service.errors import Forbidden, NotFound
from tests.factories import MRN, adverse_event, observation, patient, study, subject

BASE = "https://fhir.example.org/fhir"
ADMIN = Context(BASE)  # unrestricted: sets the scene


def ctx(scopes: str, studies: tuple[str, ...] | None = None) -> Context:
    return Context(BASE, Caller("client-1", parse_scopes(scopes), frozenset(studies) if studies is not None
                                else None))


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def two_studies(core) -> dict[str, dict[str, str]]:
    """Studies A and B, each with one enrolled patient, an Observation and an AdverseEvent."""
    scene = {}
    for name in ("A", "B"):
        sid = run(core.create(ADMIN, "ResearchStudy", study(title=f"Study {name}"))).id
        pid = run(core.create(ADMIN, "Patient", patient(f"MRN-{name}"))).id
        subj = run(core.create(ADMIN, "ResearchSubject", subject(sid, pid))).id
        obs = run(core.create(ADMIN, "Observation", observation(pid))).id
        ae = run(core.create(ADMIN, "AdverseEvent", adverse_event(pid, sid))).id
        scene[name] = {"study": sid, "patient": pid, "subject": subj, "observation": obs, "ae": ae}
    return scene


def ids_of(bundle: bytes, resource_type: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in orjson.loads(bundle).get("entry", [])
            if e["resource"]["resourceType"] != "OperationOutcome"
            and (resource_type is None or e["resource"]["resourceType"] == resource_type)}


def forbidden(scope: str):
    return pytest.raises(Forbidden, match=scope.replace(".", r"\."))


# -- scopes decide the interaction ----------------------------------------------------------------------

def test_each_interaction_needs_its_scope_letter(core, two_studies):
    a = two_studies["A"]
    reader = ctx("system/Observation.rs")
    assert run(core.read(reader, "Observation", a["observation"])).id == a["observation"]
    assert ids_of(run(core.search(reader, "Observation", [])))
    with forbidden("system/Patient.r"):
        run(core.read(reader, "Patient", a["patient"]))
    with forbidden("system/Patient.r"):
        run(core.vread(reader, "Patient", a["patient"], "1"))
    with forbidden("system/Patient.r"):
        run(core.history(reader, "Patient", a["patient"], count=10))
    with forbidden("system/Patient.s"):
        run(core.search(reader, "Patient", []))
    with forbidden("system/Observation.c"):
        run(core.create(reader, "Observation", observation(a["patient"])))
    with forbidden("system/Observation.u"):
        run(core.update(reader, "Observation", a["observation"], {**observation(a["patient"]),
                                                                    "id": a["observation"]}))
    with forbidden("system/Observation.d"):
        run(core.delete(reader, "Observation", a["observation"]))

    writer = ctx("system/Observation.cud")
    with forbidden("system/Observation.r"):
        run(core.read(writer, "Observation", a["observation"]))
    with forbidden("system/Observation.s"):  # a conditional create searches
        run(core.create(writer, "Observation", observation(a["patient"]), if_none_exist="identifier=x|1"))
    with forbidden("system/Observation.s"):
        run(core.conditional_delete(writer, "Observation", "identifier=x|1"))
    assert run(core.create(writer, "Observation", observation(a["patient"]))).status == 201


def test_v1_scopes_read_as_their_v2_letters(core, two_studies):
    a = two_studies["A"]
    assert run(core.read(ctx("system/*.read"), "Patient", a["patient"])).id == a["patient"]
    with forbidden("system/Patient.c"):
        run(core.create(ctx("system/*.read"), "Patient", patient()))
    assert run(core.create(ctx("system/Patient.write"), "Patient", patient())).status == 201
    with forbidden("system/Patient.r"):
        run(core.read(ctx("system/Patient.write"), "Patient", a["patient"]))


def test_update_that_creates_needs_create_too(core):
    body = {**patient(), "id": "client-chosen-1"}
    with forbidden("system/Patient.c"):
        run(core.update(ctx("system/Patient.u"), "Patient", "client-chosen-1", body))
    assert run(core.update(ctx("system/Patient.cu"), "Patient", "client-chosen-1", body)).status == 201


def test_transaction_and_batch_entries_each_need_their_scope(core, two_studies):
    a = two_studies["A"]
    caller = ctx("system/Observation.crs")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(a["patient"]), "request": {"method": "POST", "url": "Observation"}},
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]}
    before = ids_of(run(core.search(ADMIN, "Observation", [("_count", "100")])))
    with pytest.raises(Forbidden, match=r"system/Patient\.c") as failed:
        run(core.transaction(caller, bundle))
    assert list(failed.value.issues[0].expression) == ["Bundle.entry[1].resource"]
    assert ids_of(run(core.search(ADMIN, "Observation", [("_count", "100")]))) == before  # all or nothing

    batch = {**bundle, "type": "batch", "entry": [*bundle["entry"], {"request": {"method": "GET",
                                                                                  "url": f"Patient/{a['patient']}"}}]}
    answer = orjson.loads(run(core.transaction(caller, batch)))
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("403") and statuses[2].startswith("403")


def test_includes_of_a_type_the_token_may_not_search_are_left_out(core, two_studies):
    a = two_studies["A"]
    params = [("_id", a["observation"]), ("_include", "Observation:subject")]
    full = run(core.search(ctx("system/Observation.rs system/Patient.rs"), "Observation", params))
    assert ids_of(full, "Patient") == {a["patient"]}
    limited = orjson.loads(run(core.search(ctx("system/Observation.rs"), "Observation", params)))
    assert {e["resource"]["resourceType"] for e in limited["entry"]} == {"Observation", "OperationOutcome"}
    note = next(e for e in limited["entry"] if e["resource"]["resourceType"] == "OperationOutcome")
    assert "system/Patient.s" in note["resource"]["issue"][0]["diagnostics"]
    rev = run(core.search(ctx("system/Patient.rs"), "Patient", [("_id", a["patient"]),
                                                               ("_revinclude", "Observation:subject")]))
    assert ids_of(rev) == {a["patient"]}


def test_figures_need_read_on_observation_and_adverse_event(core, two_studies):
    a = two_studies["A"]
    with forbidden("system/AdverseEvent.r"):
        run(core.study_summary(ctx("system/Observation.r system/ResearchSubject.r"), a["study"]))
    summary = run(core.study_summary(ctx("system/*.r"), a["study"]))
    assert summary is not None


# -- studies decide the rows ----------------------------------------------------------------------------

def test_a_study_limited_client_sees_only_its_study_by_every_read_path(core, two_studies):
    a, b = two_studies["A"], two_studies["B"]
    only_a = ctx("system/*.rs", studies=(a["study"],))
    granular = ctx(f"system/*.rs?study=ResearchStudy/{a['study']}")
    for caller in (only_a, granular):
        assert ids_of(run(core.search(caller, "Observation", [("_count", "100")]))) == {a["observation"]}
        assert ids_of(run(core.search(caller, "Patient", []))) == {a["patient"]}
        assert ids_of(run(core.search(caller, "ResearchStudy", []))) == {a["study"]}
        assert ids_of(run(core.search(caller, "ResearchSubject", []))) == {a["subject"]}
        assert ids_of(run(core.search(caller, "AdverseEvent", []))) == {a["ae"]}
        counted = orjson.loads(run(core.search(caller, "Observation", [("_summary", "count")])))
        assert counted["total"] == 1
        # asking for the other study by name finds nothing rather than widening
        assert ids_of(run(core.search(caller, "Observation", [("subject", f"Patient/{b['patient']}")]))) == set()
        for rtype, key in (("Observation", "observation"), ("Patient", "patient"), ("ResearchStudy", "study"),
                           ("ResearchSubject", "subject"), ("AdverseEvent", "ae")):
            assert run(core.read(caller, rtype, a[key])).id == a[key]
            with pytest.raises(NotFound):
                run(core.read(caller, rtype, b[key]))
            with pytest.raises(NotFound):
                run(core.vread(caller, rtype, b[key], "1"))
            with pytest.raises(NotFound):
                run(core.history(caller, rtype, b[key], count=5))
        # includes and revincludes stay in the study
        inc = run(core.search(caller, "ResearchSubject", [("_include", "ResearchSubject:individual"),
                                                          ("_include", "ResearchSubject:study")]))
        assert ids_of(inc) == {a["subject"], a["patient"], a["study"]}
        rev = run(core.search(caller, "ResearchStudy", [("_revinclude", "ResearchSubject:study"),
                                                        ("_revinclude", "AdverseEvent:study")]))
        assert ids_of(rev) == {a["study"], a["subject"], a["ae"]}
        assert run(core.read_group(caller, a["study"]))["id"]
        with pytest.raises(NotFound):
            run(core.read_group(caller, b["study"]))
        groups = orjson.loads(run(core.search_groups(caller, [])))
        assert [e["resource"]["id"] for e in groups["entry"]] == [a["study"]]
        with pytest.raises(NotFound):
            run(core.study_summary(caller, b["study"]))
        assert run(core.study_summary(caller, a["study"])) is not None


def test_a_patient_enrolled_in_both_studies_is_visible_but_not_the_other_studys_data(core, two_studies):
    a, b = two_studies["A"], two_studies["B"]
    run(core.create(ADMIN, "ResearchSubject", subject(a["study"], b["patient"])))
    caller = ctx("system/*.rs", studies=(a["study"],))
    assert run(core.read(caller, "Patient", b["patient"])).id == b["patient"]
    with pytest.raises(NotFound):
        run(core.read(caller, "Observation", b["observation"]))  # recorded in study B


def test_a_study_limited_client_cannot_write_into_another_study(core, two_studies):
    a, b = two_studies["A"], two_studies["B"]
    caller = ctx("system/*.cruds", studies=(a["study"],))
    before = ids_of(run(core.search(ADMIN, "Observation", [("_count", "100")])))
    with pytest.raises(Forbidden):
        run(core.create(caller, "Observation", observation(b["patient"])))
    with pytest.raises(Forbidden):
        run(core.update(caller, "Observation", b["observation"], {**observation(a["patient"]),
                                                                    "id": b["observation"]}))
    with pytest.raises(Forbidden):  # moving its own Observation into the other study
        run(core.update(caller, "Observation", a["observation"], {**observation(b["patient"]),
                                                                    "id": a["observation"]}))
    with pytest.raises(Forbidden):
        run(core.delete(caller, "Observation", b["observation"]))
    with pytest.raises(Forbidden):
        run(core.create(caller, "ResearchSubject", subject(b["study"], a["patient"])))
    with pytest.raises(Forbidden):
        run(core.create(caller, "ResearchStudy", study()))
    with pytest.raises(Forbidden):
        run(core.update(caller, "Patient", b["patient"], {**patient("MRN-B"), "id": b["patient"]}))
    assert ids_of(run(core.search(ADMIN, "Observation", [("_count", "100")]))) == before  # nothing written
    # in its own study it writes as anyone would
    assert run(core.create(caller, "Observation", observation(a["patient"]))).status == 201
    new_patient = run(core.create(caller, "Patient", patient()))  # enrolled nowhere yet: no study touched
    assert run(core.create(caller, "ResearchSubject", subject(a["study"], new_patient.id))).status == 201
    assert run(core.read(caller, "Patient", new_patient.id)).id == new_patient.id
    # a conditional create whose match lies in the other study neither reveals nor touches it
    with pytest.raises(Forbidden):
        run(core.create(caller, "Patient", patient("MRN-B"), if_none_exist=f"identifier={MRN}|MRN-B"))
