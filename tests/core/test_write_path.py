"""The single write and the Bundle entry are one write path (issue 12 §6): a single POST of an Observation runs the
Bundle's per-entry machinery (its type's prefetch look-ups, the same rows) and, on PostgreSQL, reaches the database
in two round trips: the look-ups, then the rows, the audit append and the COMMIT in one pipeline."""

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import text

from service.auth.scopes import parse_scopes
from service.core.context import Caller, Context
from service.errors import IdentifierTaken
from tests.conftest import ON_POSTGRES
from tests.factories import observation, patient

BASE = "https://fhir.example.org/fhir"
LAB = "urn:oid:1.2.410.200001.99"


def ctx(name: str = "ehr", scopes: str | None = None) -> Context:
    return Context(BASE, Caller(name, parse_scopes(scopes) if scopes else None), request_id=f"req-{name}")


def run(coroutine):
    return asyncio.run(coroutine)


@contextlib.contextmanager
def round_trips() -> Iterator[list[str]]:
    """What is sent to PostgreSQL, one item per round trip: each statement outside a pipeline, each pipeline, each
    commit or rollback of an open transaction (counted on the driver, below SQLAlchemy and the store's driver code)."""
    sent: list[str] = []
    cursor, connection = psycopg.Cursor, psycopg.Connection
    execute, executemany, pipeline = cursor.execute, cursor.executemany, connection.pipeline
    commit, rollback = connection.commit, connection.rollback

    def counted_execute(self, query, *args, **kwargs):
        if self.connection._pipeline is None:
            sent.append(str(query).split()[0] + " " + " ".join(str(query).split()[1:4]))
        return execute(self, query, *args, **kwargs)

    def counted_executemany(self, query, *args, **kwargs):
        if self.connection._pipeline is None:
            sent.append(str(query).split("(")[0])
        return executemany(self, query, *args, **kwargs)

    @contextlib.contextmanager
    def counted_pipeline(self):
        outer = self._pipeline is None
        if outer:
            sent.append("pipeline")
        with pipeline(self) as p:
            yield p

    def counted_end(end, name):
        def run_end(self):
            if self.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                sent.append(name)
            return end(self)
        return run_end

    patches = {(cursor, "execute"): counted_execute, (cursor, "executemany"): counted_executemany,
               (connection, "pipeline"): counted_pipeline, (connection, "commit"): counted_end(commit, "COMMIT"),
               (connection, "rollback"): counted_end(rollback, "ROLLBACK")}
    saved = {key: getattr(*key) for key in patches}
    for (owner, name), value in patches.items():
        setattr(owner, name, value)
    try:
        yield sent
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def lab(n: int) -> list[dict[str, str]]:
    return [{"system": LAB, "value": f"LAB-{n}"}]


@pytest.mark.skipif(not ON_POSTGRES, reason="round trips to a PostgreSQL server")
def test_a_single_post_is_two_round_trips_on_postgres(core, enrolled):
    run(core.create(ctx(), "Observation", observation(enrolled["patient"], identifier=lab(1))))  # warm: catalogues
    with round_trips() as sent:
        stored = run(core.create(ctx(), "Observation", observation(enrolled["patient"], identifier=lab(2))))
    assert stored.status == 201
    assert len(sent) == 2, sent
    assert sent[0].startswith("SELECT") and sent[1] == "pipeline"  # the look-ups; rows + audit + COMMIT
    with core.engine.connect() as conn:  # and it was all committed: the resource, its rows, its identifier, its event
        assert conn.execute(text("SELECT count(*) FROM measurement WHERE id = :id"), {"id": stored.id}).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM resource_identifier WHERE resource_id = :id"),
                            {"id": stored.id}).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM audit_entity WHERE resource_id = :id"),
                            {"id": stored.id}).scalar() >= 1


@pytest.mark.skipif(not ON_POSTGRES, reason="round trips to a PostgreSQL server")
def test_a_transaction_bundle_of_observations_sends_its_rows_audit_and_commit_together(core, enrolled):
    entries = [{"resource": observation(enrolled["patient"], identifier=lab(10 + i), value=float(i)),
                "request": {"method": "POST", "url": "Observation"}} for i in range(3)]
    with round_trips() as sent:
        run(core.transaction(ctx(), {"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    # the lock of written ids has nothing to lock (POSTs only); the look-ups of the patient (one statement); the
    # pipeline of rows, audit and COMMIT
    assert sent.count("pipeline") == 1 and "COMMIT" not in sent, sent
    assert len(sent) == 2, sent


def _stored(core, id: str) -> dict[str, Any]:
    """Everything stored of Observation `id`, with what differs by nature between two writes (the id, the time of
    the write) taken out."""
    with core.engine.connect() as conn:
        content = conn.execute(text("SELECT content FROM resource WHERE resource_type = 'Observation' AND id = :id"),
                               {"id": id}).scalar_one()
        version = conn.execute(text("SELECT version_id, method, content FROM resource_version "
                                    "WHERE resource_type = 'Observation' AND id = :id"), {"id": id}).one()
        measurement = dict(conn.execute(text("SELECT * FROM measurement WHERE id = :id"), {"id": id}).mappings().one())
        identifiers = conn.execute(text("SELECT system, value FROM resource_identifier WHERE resource_id = :id"),
                                   {"id": id}).all()

    def neutral(raw: str) -> dict[str, Any]:
        body = orjson.loads(raw)
        body["id"] = "ID"
        body["meta"]["lastUpdated"] = "T"
        return body
    measurement.pop("id")
    return {"content": neutral(content), "version": (version[0], version[1], neutral(version[2])),
            "measurement": measurement, "identifiers": [(s, v.removesuffix("-b")) for s, v in identifiers]}


def test_a_single_post_and_a_bundle_entry_store_the_same(core, enrolled):
    """One path: the same Observation sent alone and as a transaction Bundle's entry gives the same resource
    (byte for byte, id and time aside), the same version, typed row and identifier."""
    body = observation(enrolled["patient"], identifier=lab(20), unit="{score}", date="2024-02-01T09:30:00+09:00")
    alone = run(core.create(ctx(), "Observation", body))
    twin = {**body, "identifier": [{"system": LAB, "value": "LAB-20-b"}]}
    answer = orjson.loads(run(core.transaction(ctx(), {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": twin, "request": {"method": "POST", "url": "Observation"}}]})))
    in_bundle = answer["entry"][0]["response"]["location"].split("/")[-3]
    one, other = _stored(core, alone.id), _stored(core, in_bundle)
    other["content"]["identifier"][0]["value"] = "LAB-20"
    other["version"][2]["identifier"][0]["value"] = "LAB-20"
    assert one == other
    assert one["measurement"]["visit"] is not None and one["identifiers"] == [(LAB, "LAB-20")]


def test_a_taken_identifier_is_the_same_409_naming_the_element(core, enrolled):
    """On PostgreSQL the identifier is inserted without looking its owner up first: the unique key refuses it, and
    the answer is still the 409 naming the element and the owner, with nothing of the refused write stored."""
    first = run(core.create(ctx(), "Observation", observation(enrolled["patient"], identifier=lab(30))))
    with pytest.raises(IdentifierTaken) as taken:
        run(core.create(ctx(), "Observation", observation(enrolled["patient"], identifier=lab(30), value=3.0)))
    assert taken.value.status_code == 409
    assert [e for i in taken.value.issues for e in i.expression] == ["Observation.identifier[0]"]
    assert f"Observation/{first.id} already has identifier {LAB}|LAB-30" in str(taken.value)
    with core.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM resource WHERE resource_type = 'Observation'")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM measurement")).scalar() == 1
    # and the connection the refusal went through writes the next one
    assert run(core.create(ctx(), "Observation", observation(enrolled["patient"], identifier=lab(31)))).status == 201


def test_a_single_post_for_a_patient_not_enrolled_or_unknown_is_refused_as_before(core, enrolled):
    """The prefetch look-up (existence and enrolments in one statement on PostgreSQL) answers what the per-entry
    look-ups answered: an unknown patient and a patient with no enrolment are refused, naming the subject."""
    lonely = run(core.create(ctx("admin"), "Patient", patient())).id
    for pid in ("no-such-patient", lonely):
        with pytest.raises(Exception) as refused:
            run(core.create(ctx(), "Observation", observation(pid)))
        assert refused.value.status_code in (404, 422)  # type: ignore[attr-defined]
        assert "Observation.subject" in [e for i in refused.value.issues for e in i.expression]  # type: ignore[attr-defined]
