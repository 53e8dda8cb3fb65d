"""SDTM datasets over HTTP (`/studies/{id}/sdtm…`), checked against CDISC's Dataset-JSON v1.1 schema, pandas'
XPORT reader, an XML parse of define.xml, and row counts and key values computed here from the stored FHIR
resources: on the demo trial and on the summary tests' cohort (unit variants, missing visits, a withdrawal, results
that don't count, a deleted one, an unscheduled one) with a correction. SQLite and PostgreSQL."""

import asyncio
import io
import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import jsonschema
import orjson
import pandas as pd
import pytest
from sqlalchemy import text

from service.auth.scopes import parse_scopes
from service.core.context import Caller, Context
from service.core.interactions import Core
from service.db import make_engine
from service.demo.load import load_demo
from service.errors import Forbidden, NotFound
from tests.stats.test_stats import COUNTED, DELETED, EVENTS, POSTED, SUBJECTS, cohort  # noqa: F401  (the fixture)

SCHEMA = json.loads((Path(__file__).resolve().parents[2].parent / "shared" / "cdisc"
                     / "dataset-json-1.1.schema.json").read_text())
VALIDATOR = jsonschema.Draft201909Validator(SCHEMA)
COUNTED_STATUSES = {"final", "amended", "corrected"}
LOINC = "http://loinc.org"
TO_CANONICAL = {"ng/mL": 1 / 2.4, "k[IU]/L": 1.0, "kU/L": 1.0, "[IU]/mL": 1.0, "/uL": 1 / 1000, "{cells}/uL": 1 / 1000,
                "10*9/L": 1.0, "10*3/uL": 1.0, "%": 1.0}


def dataset(client, study: str, name: str) -> dict:
    response = client.get(f"/studies/{study}/sdtm/{name}.json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert not list(VALIDATOR.iter_errors(body)), name
    return body


def rows(body: dict) -> list[dict]:
    names = [c["name"] for c in body["columns"]]
    return [dict(zip(names, r, strict=True)) for r in body["rows"]]


def current(engine, rtype: str) -> list[dict]:
    """The stored FHIR resources of a type (current versions), as the server keeps them."""
    with engine.connect() as conn:
        found = conn.execute(text("SELECT content FROM resource WHERE resource_type = :t AND deleted = :f"),
                             {"t": rtype, "f": False}).scalars().all()
    return [orjson.loads(c) for c in found]


def the_study(engine) -> str:
    """The one study stored, or the demo's phase IIa study (NCT01927705; its phase I study is `partOf` it)."""
    with engine.connect() as conn:
        ids = conn.execute(text("SELECT id FROM study")).scalars().all()
        if len(ids) == 1:
            return ids[0]
        return conn.execute(text("SELECT resource_id FROM resource_identifier WHERE resource_type = 'ResearchStudy' "
                                 "AND value = 'NCT01927705'")).scalar_one()


@pytest.fixture
def demo(client, engine) -> str:
    load_demo(engine)
    return the_study(engine)


def test_every_dataset_validates_and_counts_as_listed(client, demo):
    listing = client.get(f"/studies/{demo}/sdtm")
    assert listing.status_code == 200, listing.text
    listed = {d["name"]: d["records"] for d in listing.json()["datasets"]}
    assert set(listed) >= {"DM", "SV", "QS", "LB", "AE", "DS", "EX", "TS", "TA", "TE", "TV", "SUPPDM", "SUPPEX"}
    assert listing.json()["studyid"] == "NCT01927705"
    for name, records in listed.items():
        body = dataset(client, demo, name)
        assert body["records"] == len(body["rows"]) == records, name
        assert body["name"] == name and body["itemGroupOID"] == f"IG.{name}"
        for column in body["columns"]:
            if column["dataType"] == "string":
                longest = max((len(r[i].encode()) for r in body["rows"] for i, c in enumerate(body["columns"])
                               if c is column and isinstance(r[i], str)), default=1)
                assert column["length"] == max(1, longest), (name, column["name"])
    # the NCT number names the study too
    assert client.get("/studies/NCT01927705/sdtm/DM.json").json()["records"] == listed["DM"]


def test_demo_rows_equal_what_the_fhir_resources_say(client, engine, demo):
    # the demo's phase IIa study: its subjects, and their patients' results and events (not the phase I study's)
    subjects = [s for s in current(engine, "ResearchSubject") if s["study"]["reference"] == f"ResearchStudy/{demo}"]
    patients = {s["individual"]["reference"] for s in subjects}
    observations = [o for o in current(engine, "Observation")
                    if o["status"] in COUNTED_STATUSES and o["subject"]["reference"] in patients]
    events = [e for e in current(engine, "AdverseEvent")
              if e["actuality"] == "actual" and e["subject"]["reference"] in patients]
    dm, qs, lb = (rows(dataset(client, demo, d)) for d in ("DM", "QS", "LB"))
    ae, ds, sv, ex = (rows(dataset(client, demo, d)) for d in ("AE", "DS", "SV", "EX"))

    assert sorted(r["USUBJID"] for r in dm) == sorted(f"NCT01927705-{s['id']}" for s in subjects)
    by_subject = {s["id"]: s for s in subjects}
    for r in dm:
        s = by_subject[r["SUBJID"]]
        assert (r["RFSTDTC"], r["RFENDTC"], r["ARM"].split(" ")[0], r["ACTARM"].split(" ")[0]) == (
            s.get("period", {}).get("start", ""), s.get("period", {}).get("end", ""), s["assignedArm"],
            s.get("actualArm", ""))  # (subjects withdrawn before their dose have no day 0)

    labs = [o for o in observations if o["code"]["coding"][0]["system"] == LOINC]
    scores = [o for o in observations if o["code"]["coding"][0]["system"] != LOINC]
    assert len(lb) == len(labs)
    assert len(qs) == sum(1 + len(o.get("component", ())) for o in scores)
    by_spid = {f"Observation/{o['id']}/_history/{o['meta']['versionId']}": o for o in observations}
    for r in lb:
        o = by_spid[r["LBSPID"]]
        quantity = o["valueQuantity"]
        assert float(r["LBORRES"]) == quantity["value"] and r["LBORRESU"] == quantity["code"]
        assert r["LBSTRESN"] == pytest.approx(quantity["value"] * TO_CANONICAL[quantity["code"]], rel=1e-12)
        assert r["LBLOINC"] == o["code"]["coding"][0]["code"] and r["LBDTC"] == o["effectiveDateTime"][:19]
    assert {r["QSSPID"] for r in qs} == {f"Observation/{o['id']}/_history/{o['meta']['versionId']}" for o in scores}

    # a baseline flag per subject and measure that has a baseline result, on one record of it
    flagged = Counter((r["USUBJID"], r["QSCAT"]) for r in qs if r["QSBLFL"] == "Y" and r["QSTESTCD"] == r["QSCAT"])
    assert set(flagged.values()) == {1}
    # --SEQ: 1…n within each subject, in row order
    for domain_rows, seq in ((qs, "QSSEQ"), (lb, "LBSEQ"), (ae, "AESEQ")):
        per: dict[str, list[int]] = {}
        for r in domain_rows:
            per.setdefault(r["USUBJID"], []).append(r[seq])
        assert all(v == list(range(1, len(v) + 1)) for v in per.values())
    assert [r["USUBJID"] for r in qs] == sorted(r["USUBJID"] for r in qs)

    assert len(ae) == len(events)
    assert {r["AESPID"] for r in ae} == {f"AdverseEvent/{e['id']}/_history/{e['meta']['versionId']}" for e in events}
    withdrawn = {s["id"] for s in subjects if s["status"] == "withdrawn"}
    assert {r["USUBJID"].split("-", 1)[1] for r in ds if r["DSDECOD"] != "COMPLETED"} == withdrawn
    visits = {(o["subject"]["reference"], t["code"]) for o in observations for t in o["meta"]["tag"]
              if t["system"] == "https://trial-fhir.org/CodeSystem/visit"}
    assert len(sv) == len(visits)
    dosed = [s for s in subjects if s.get("period", {}).get("start")]  # a day 0: the administration
    assert len(ex) == len(dosed) and all(r["EXDOSE"] in (2.5e7, 5.0e7) for r in ex)


def test_xpt_files_read_back_with_pandas_to_the_same_values(client, demo):
    for name in ("DM", "QS", "LB", "AE", "DS", "SV", "EX", "TS", "SUPPDM"):
        response = client.get(f"/studies/{demo}/sdtm/{name}.xpt")
        assert response.status_code == 200, response.text
        assert response.content[:80].startswith(b"HEADER RECORD*******LIBRARY HEADER RECORD!!!!!!!")  # version 5
        frame = pd.read_sas(io.BytesIO(response.content), format="xport", encoding="ascii")
        body = dataset(client, demo, name)
        assert list(frame.columns) == [c["name"] for c in body["columns"]]
        assert len(frame) == body["records"]
        for i, row in enumerate(body["rows"]):
            for j, column in enumerate(body["columns"]):
                got, want = frame.iat[i, j], row[j]
                if column["dataType"] == "string":
                    want = (want or "").replace("×", "x")
                    assert (got if isinstance(got, str) else "") == want, (name, column["name"], i)
                elif want is None:
                    assert pd.isna(got), (name, column["name"], i)
                else:
                    assert got == pytest.approx(want, rel=1e-12), (name, column["name"], i)


def test_define_xml_lists_every_dataset_and_variable(client, demo):
    response = client.get(f"/studies/{demo}/sdtm/define.xml")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(response.content)
    odm = "{http://www.cdisc.org/ns/odm/v1.3}"
    assert root.tag == f"{odm}ODM" and root.get("{http://www.cdisc.org/ns/def/v2.1}Context") == "Submission"
    groups = {g.get("Name"): [ref.get("ItemOID") for ref in g.findall(f"{odm}ItemRef")]
              for g in root.iter(f"{odm}ItemGroupDef")}
    items = {i.get("OID") for i in root.iter(f"{odm}ItemDef")}
    listed = [d["name"] for d in client.get(f"/studies/{demo}/sdtm").json()["datasets"]]
    assert sorted(groups) == sorted(listed)
    for name in listed:
        body = dataset(client, demo, name)
        assert groups[name] == [c["itemOID"] for c in body["columns"]]
    assert items == {oid for refs in groups.values() for oid in refs}


def test_unknown_datasets_and_studies_are_404(client, demo):
    for url in (f"/studies/{demo}/sdtm/XX.json", f"/studies/{demo}/sdtm/DM.csv", "/studies/nope/sdtm",
                "/studies/nope/sdtm/DM.json"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["resourceType"] == "OperationOutcome"


# -- the hand-made cohort ---------------------------------------------------------------------------------------

def _subjects_by_code(engine) -> dict[str, str]:
    """Cohort code (H1, …) -> ResearchSubject id, from the Patients' MRNs."""
    with engine.connect() as conn:
        found = conn.execute(text(
            "SELECT i.value, s.id FROM resource_identifier i JOIN research_subject s ON s.patient_id = i.resource_id "
            "WHERE i.resource_type = 'Patient'")).all()
    return {value.removeprefix("MRN-"): sid for value, sid in found}


def test_cohort_rows_equal_an_independent_computation(client, engine, cohort):  # noqa: F811
    code_of = {sid: code for code, sid in _subjects_by_code(engine).items()}
    qs, lb = rows(dataset(client, cohort, "QS")), rows(dataset(client, cohort, "LB"))
    studyid = rows(dataset(client, cohort, "DM"))[0]["STUDYID"]
    expected = Counter()
    for code, measure, when, _value, _unit, status in POSTED:
        if status in COUNTED_STATUSES and (code, measure, when) not in DELETED:
            expected[(code, measure)] += 1
    got = Counter((code_of[r["USUBJID"].removeprefix(studyid + "-")], r[p + "CAT"]) for p, rs in (("QS", qs),
                                                                                                  ("LB", lb))
                  for r in rs)
    assert got == expected
    # the baseline flag marks the value the summaries count at baseline, in the canonical unit
    for p, rs in (("QS", qs), ("LB", lb)):
        for r in rs:
            code = code_of[r["USUBJID"].removeprefix(studyid + "-")]
            if r[p + "BLFL"] == "Y":
                assert r[p + "STRESN"] == pytest.approx(COUNTED[code][r[p + "CAT"]]["baseline"], rel=1e-12)
                assert r["VISIT"] == "BASELINE"
    flags = Counter((r["USUBJID"], r[p + "CAT"]) for p, rs in (("QS", qs), ("LB", lb)) for r in rs
                    if r[p + "BLFL"] == "Y")
    assert len(flags) == sum(1 for s in COUNTED.values() for m in s.values() if "baseline" in m)
    # unit variants: IgE 2400 ng/mL is 1000 [IU]/mL, kept as sent beside it
    h1_ige = [r for r in lb if code_of[r["USUBJID"].removeprefix(studyid + "-")] == "H1"]
    assert [(r["LBORRES"], r["LBORRESU"], r["LBSTRESN"], r["LBSTRESU"]) for r in h1_ige] == [
        ("2400", "ng/mL", 1000.0, "[IU]/mL"), ("1920", "ng/mL", 800.0, "[IU]/mL")]
    # L1's day-50 result lies outside every window: an unscheduled visit after week 4, in QS and in SV
    l1 = [r for r in qs if code_of[r["USUBJID"].removeprefix(studyid + "-")] == "L1" and r["QSDY"] == 51]
    assert [(r["VISITNUM"], r["VISIT"], r["QSSTRESN"]) for r in l1] == [(2.01, "UNSCHEDULED 2.01", 1.0)]
    sv = rows(dataset(client, cohort, "SV"))
    assert any(r["VISITNUM"] == 2.01 and r["SVUPDES"] for r in sv)
    # disposition: H4 withdrew because of an adverse event; the others completed
    ds = {code_of[r["USUBJID"].removeprefix(studyid + "-")]: r for r in rows(dataset(client, cohort, "DS"))}
    assert ds["H4"]["DSDECOD"] == "ADVERSE EVENT"
    assert {c for c, r in ds.items() if r["DSDECOD"] == "COMPLETED"} == set(SUBJECTS) - {"H4"}
    ae = rows(dataset(client, cohort, "AE"))
    assert len(ae) == sum(1 for e in EVENTS if e[5] == "actual")
    assert Counter(r["AEREL"] for r in ae) == Counter("RELATED" if e[3] in ("C53258", "C53260") else "NOT RELATED"
                                                      for e in EVENTS if e[5] == "actual")
    assert sorted(r["AESER"] for r in ae) == sorted("Y" if e[1] else "N" for e in EVENTS if e[5] == "actual")


def test_same_state_same_bytes_and_a_correction_is_a_changed_row(client, engine, cohort):  # noqa: F811
    names = ("QS", "LB", "DM", "AE")
    before = {(n, f): client.get(f"/studies/{cohort}/sdtm/{n}.{f}").content for n in names for f in ("json", "xpt")}
    again = {(n, f): client.get(f"/studies/{cohort}/sdtm/{n}.{f}").content for n in names for f in ("json", "xpt")}
    assert before == again
    old = rows(orjson.loads(before[("QS", "json")]))
    # correct H1's baseline EASI (20 -> 21)
    target = next(o for o in current(engine, "Observation") if o["effectiveDateTime"] == "2024-01-10"
                  and o["code"]["coding"][0]["code"] == "EASI" and o["valueQuantity"]["value"] == 20)
    target.update(status="corrected", valueQuantity={**target["valueQuantity"], "value": 21})
    response = client.put(f"/fhir/Observation/{target['id']}", json=target)
    assert response.status_code == 200, response.text
    new = rows(dataset(client, cohort, "QS"))
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert len(changed) == 1
    was, now = changed[0]
    assert was["QSSPID"] == f"Observation/{target['id']}/_history/1" and was["QSSTRESN"] == 20
    assert now["QSSPID"] == f"Observation/{target['id']}/_history/2" and now["QSSTRESN"] == 21


def test_exposure_from_a_medication_administration_the_site_sent(client, engine, cohort):  # noqa: F811
    from tests.factories import medication_administration

    h1 = _subjects_by_code(engine)["H1"]
    with engine.connect() as conn:
        patient_id = conn.execute(text("SELECT patient_id FROM research_subject WHERE id = :s"), {"s": h1}).scalar()
    given = client.post("/fhir/MedicationAdministration", json=medication_administration(
        patient_id, date="2024-01-10T10:00:00+09:00", dose=5.0e7))
    assert given.status_code == 201, given.text
    ex = rows(dataset(client, cohort, "EX"))
    mine = [r for r in ex if r["USUBJID"].endswith(h1)]
    assert [(r["EXTRT"], r["EXDOSE"], r["EXDOSU"], r["EXROUTE"], r["EXSTDTC"], r["EXSTDY"], r["EXSPID"])
            for r in mine] == [("HUCB-MSC", 5.0e7, "CELLS", "SUBCUTANEOUS", "2024-01-10T10:00:00", 1,
                                f"MedicationAdministration/{given.json()['id']}/_history/1")]
    derived = {r["USUBJID"] for r in rows(dataset(client, cohort, "SUPPEX")) if r["QNAM"] == "EXDERIV"}
    assert mine[0]["USUBJID"] not in derived and len(derived) == len(ex) - 1


# -- access and de-identification, in the core -------------------------------------------------------------------

BASE = "https://fhir.example.org/fhir"
READ_ALL = " ".join(f"system/{t}.rs" for t in ("ResearchStudy", "Patient", "ResearchSubject", "Observation",
                                                  "AdverseEvent", "MedicationAdministration", "Procedure"))


@pytest.fixture
def core(database_url, settings):
    engine = make_engine(database_url)
    core = Core(engine, settings)
    yield core
    asyncio.run(core.stop())
    engine.dispose()


def _list(core: Core, caller: Caller, study: str) -> dict:
    return asyncio.run(core.sdtm_datasets(Context(BASE, caller), study))


def _dataset(core: Core, caller: Caller, study: str, name: str, tmp_path: Path) -> list[dict]:
    path = asyncio.run(core.sdtm_file(Context(BASE, caller), study, f"{name}.json", tmp_path))
    return rows(orjson.loads(path.read_bytes()))


def test_scopes_and_studies_decide_access(core, cohort):  # noqa: F811
    without = READ_ALL.replace("system/Procedure.rs", "")
    with pytest.raises(Forbidden) as refused:
        _list(core, Caller("c", parse_scopes(without)), cohort)
    assert "Procedure" in str(refused.value)
    with pytest.raises(NotFound):
        _list(core, Caller("c", parse_scopes(READ_ALL), frozenset({"another-study"})), cohort)
    assert _list(core, Caller("c", parse_scopes(READ_ALL), frozenset({cohort})), cohort)["datasets"]


def test_a_deidentified_client_gets_deidentified_datasets(core, cohort, tmp_path):  # noqa: F811
    full, deid = Caller("c", parse_scopes(READ_ALL)), Caller("r", parse_scopes(READ_ALL), deidentified=True)
    dm, dm_deid = (_dataset(core, c, cohort, "DM", tmp_path / c.name) for c in (full, deid)
                   if (tmp_path / c.name).mkdir() is None)
    assert [r["BRTHDTC"] for r in dm] == ["1990-01-01"] * len(dm)
    assert [r["BRTHDTC"] for r in dm_deid] == ["1990"] * len(dm)  # the year only
    pseudonyms = {r["QVAL"] for r in _dataset(core, deid, cohort, "SUPPDM", tmp_path / "r") if r["QNAM"] == "SRCPAT"}
    assert pseudonyms and all(p.startswith("Patient/pseudo-") for p in pseudonyms)
    qs, qs_deid = (_dataset(core, c, cohort, "QS", tmp_path / c.name) for c in (full, deid))
    assert len(qs) == len(qs_deid)
    # dates move by the patient's offset: study days and values stay
    assert [(r["QSDY"], r["QSSTRESN"], r["VISIT"]) for r in qs] == [(r["QSDY"], r["QSSTRESN"], r["VISIT"])
                                                                    for r in qs_deid]
    assert [r["QSDTC"] for r in qs] != [r["QSDTC"] for r in qs_deid]


# -- ADaM ----------------------------------------------------------------------------------------------------------

def adam(client, study: str, name: str) -> list[dict]:
    response = client.get(f"/studies/{study}/adam/{name}.json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert not list(VALIDATOR.iter_errors(body)), name
    assert body["records"] == len(body["rows"])
    return rows(body)


@pytest.mark.parametrize("which", ["demo", "cohort"])
def test_the_summary_recomputed_from_adam_equals_the_summary(client, engine, which, request):
    study = request.getfixturevalue(which)
    summary = client.get(f"/studies/{study}/summary").json()
    listing = client.get(f"/studies/{study}/adam").json()["datasets"]
    names = {d["name"] for d in listing}
    adsl = adam(client, study, "ADSL")
    arm_of = {r["USUBJID"]: r["TRT01A"].split(" (")[0] for r in adsl if r["TRT01A"]}
    for arm in summary["arms"]:
        mine = [r for r in adsl if arm_of.get(r["USUBJID"]) == arm["name"]]
        assert len(mine) == arm["enrolled"]
        assert sum(r["COMPLFL"] == "Y" for r in mine) == arm["completed"]
        assert sum(bool(r["DCSREAS"]) for r in mine) == arm["withdrawn"]
    bds = {}
    for name in sorted(names - {"ADSL"}):
        for r in adam(client, study, name):
            bds.setdefault(r["PARAMCD"], []).append(r)
    # measure key -> PARAMCD, from the SDTM results' category (the measure) and test code (the totals' rows)
    measure_code = {r["QSCAT"]: r["QSTESTCD"] for r in rows(dataset(client, study, "QS")) if not r["QSSCAT"]}
    measure_code |= {r["LBCAT"]: r["LBTESTCD"] for r in rows(dataset(client, study, "LB"))}
    assert set(measure_code.values()) <= set(bds)
    checked = 0
    for arm in summary["arms"]:
        for figure in arm["measures"]:
            code = measure_code.get(figure["measure"])
            got = [r for r in bds.get(code, ()) if arm_of.get(r["USUBJID"]) == arm["name"]
                   and r["AVISIT"] == figure["visit"].replace("-", " ").upper()]
            values = [r["AVAL"] for r in got]
            assert len(values) == figure["n"], (arm["name"], figure["measure"], figure["visit"])
            if values:
                assert sum(values) / len(values) == pytest.approx(figure["mean"], rel=1e-9, abs=1e-9)
                assert (min(values), max(values)) == (figure["min"], figure["max"])
            changes = [r["CHG"] for r in got if r["CHG"] is not None]
            if figure["visit"] != "baseline" and changes:
                assert sum(changes) / len(changes) == pytest.approx(figure["mean_change"], rel=1e-9, abs=1e-9)
            pct = [r["PCHG"] for r in got if r["PCHG"] is not None]
            if figure["visit"] != "baseline" and pct:
                assert sum(pct) / len(pct) == pytest.approx(figure["mean_pct_change"], rel=1e-9, abs=1e-9)
            checked += 1
        for figure in arm["responders"]:
            found = [(r, i) for rs in bds.values() for r in rs for i in range(1, 5)
                     if r.get(f"CRIT{i}", "").startswith(figure["measure"] + ":")
                     and arm_of.get(r["USUBJID"]) == arm["name"]
                     and r["AVISIT"] == figure["visit"].replace("-", " ").upper()]
            # under non-responder imputation the rate's denominator also holds the subjects without the visit
            # (non-responders, with no ADaM row there): the rows are those judged from their values
            judged = figure["n_observed"] if figure["population"] == "non-responder-imputation" else figure["n"]
            assert len(found) == judged, (arm["name"], figure["measure"], figure["visit"])
            assert sum(r[f"CRIT{i}FL"] == "Y" for r, i in found) == figure["responders"]
            checked += 1
    assert checked > 20


def test_adam_xpt_reads_back_and_names_follow_the_catalogue(client, demo):
    listing = {d["name"] for d in client.get(f"/studies/{demo}/adam").json()["datasets"]}
    assert "ADSL" in listing and len(listing) == 1 + 7  # one BDS dataset per measure of the catalogue
    assert all(len(n) <= 8 for n in listing)
    for name in ("ADSL", sorted(listing - {"ADSL"})[0]):
        response = client.get(f"/studies/{demo}/adam/{name}.xpt")
        assert response.status_code == 200
        frame = pd.read_sas(io.BytesIO(response.content), format="xport", encoding="ascii")
        assert len(frame) == len(adam(client, demo, name))
    assert client.get(f"/studies/{demo}/adam/DM.json").status_code == 404  # an SDTM dataset
    assert client.get(f"/studies/{demo}/sdtm/ADSL.json").status_code == 404  # an ADaM one


def test_cli_writes_every_dataset_with_the_same_bytes_as_the_routes(cli, client, demo, tmp_path):
    code, _, err = cli("sdtm", "export", "NCT01927705", str(tmp_path / "out"))
    assert code == 0, err
    for name in ("DM", "QS", "AE"):
        assert (tmp_path / "out" / f"{name.lower()}.json").read_bytes() == client.get(
            f"/studies/{demo}/sdtm/{name}.json").content
    assert (tmp_path / "out" / "define.xml").read_bytes() == client.get(f"/studies/{demo}/sdtm/define.xml").content
    assert (tmp_path / "out" / "adam" / "adsl.xpt").read_bytes() == client.get(
        f"/studies/{demo}/adam/ADSL.xpt").content
    code, _, err = cli("sdtm", "export", "NCT-NOPE", str(tmp_path / "x"))
    assert code == 1 and "no study" in err
