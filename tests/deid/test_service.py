"""The de-identification secret kept in the database, and pseudonyms resolved to Patient ids (SQLite and
PostgreSQL)."""

from concurrent.futures import ThreadPoolExecutor

import orjson
from sqlalchemy import func, select

from service.db import read_connection
from service.deid.deidentify import Deidentifier
from service.deid.service import D, deidentifier_from, pseudonym_resolver, resolve_pseudonym, secret_from
from tests.factories import created, patient


def test_a_configured_secret_is_used_as_it_is(settings, engine):
    assert secret_from(settings.model_copy(update={"deid_secret": "configured"}), engine) == b"configured"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(D)).scalar_one() == 0


def test_a_generated_secret_is_made_once_and_kept_even_by_racing_workers(settings, engine):
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: secret_from(settings, engine), range(16)))
    assert len(secrets) == 1
    secret = secrets.pop()
    assert len(secret) == 32
    assert secret_from(settings, engine) == secret
    assert deidentifier_from(settings, engine).pseudonym("x") == Deidentifier(secret).pseudonym("x")


def test_pseudonyms_resolve_to_patient_ids_and_new_patients_are_found(client, settings, engine):
    deid = deidentifier_from(settings, engine)
    first = created(client.post("/fhir/Patient", json=patient("MRN-1")))["id"]
    with read_connection(engine) as conn:
        assert resolve_pseudonym(conn, deid, deid.pseudonym(first)) == first
        assert resolve_pseudonym(conn, deid, "pseudo-" + "0" * 32) is None
        assert resolve_pseudonym(conn, deid, first) is None  # an internal id is no pseudonym
    second = created(client.post("/fhir/Patient", json=patient("MRN-2")))["id"]
    with read_connection(engine) as conn:
        assert resolve_pseudonym(conn, deid, deid.pseudonym(second)) == second
        assert resolve_pseudonym(conn, deid, deid.pseudonym(first)) == first
    assert deid.known == {deid.pseudonym(first): first, deid.pseudonym(second): second}


def test_a_search_by_pseudonym_finds_the_patients_data_and_an_unknown_one_nothing(client, settings, engine):
    deid = deidentifier_from(settings, engine)
    resolve = pseudonym_resolver(engine, deid)
    mine = created(client.post("/fhir/Patient", json=patient("MRN-1")))["id"]
    created(client.post("/fhir/Patient", json=patient("MRN-2")))

    def search(params):
        translated = deid.translate_params(params, "Patient", resolve)
        return orjson.loads(deid.bundle(client.get("/fhir/Patient", params=translated).content))

    found = search([("_id", deid.pseudonym(mine))])
    assert [e["resource"]["id"] for e in found["entry"]] == [deid.pseudonym(mine)]
    assert mine not in orjson.dumps(found).decode()  # entries, fullUrls and links
    assert "MRN-1" not in orjson.dumps(found).decode()
    assert search([("_id", "pseudo-" + "0" * 32)]).get("entry", []) == []
    assert search([("_id", mine)]).get("entry", []) == []
    assert search([("gender", "female")])["total"] == 2  # the same search, nothing named: everything
