"""SQL of the EHR pulls: sources, their lease, watermarks, refused resources, and what the pulls read of the trial
(enrolled patients, their identifiers, our copies of upstream resources). Never commits."""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlmodel import Session

from service.adverse_event.models import AdverseEventRecord
from service.ehr.models import EhrSourceRecord, EhrSyncIssueRecord, EhrWatermarkRecord
from service.observation.models import MeasurementRecord
from service.store.models import IdentifierRecord, table_of
from service.trial.models import StudyRecord, SubjectRecord

S = table_of(EhrSourceRecord)
W = table_of(EhrWatermarkRecord)
ISSUE = table_of(EhrSyncIssueRecord)
ID = table_of(IdentifierRecord)
SUBJECT = table_of(SubjectRecord)
STUDY = table_of(StudyRecord)
#: the typed table of each type a pull stores, which names the patient of each resource
PATIENT_OF = {"Observation": table_of(MeasurementRecord), "AdverseEvent": table_of(AdverseEventRecord)}


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def get_source(session: Session, name: str) -> EhrSourceRecord | None:
    return session.get(EhrSourceRecord, name)


def find_sources(session: Session) -> list[EhrSourceRecord]:
    return list(session.exec(select(EhrSourceRecord).order_by(S.c.name)).scalars())  # type: ignore[call-overload]


def add_source(session: Session, source: EhrSourceRecord) -> None:
    session.add(source)


def delete_source(session: Session, name: str) -> bool:
    """Remove a source with its watermarks and reported issues (what it stored stays: it is trial data)."""
    session.execute(delete(W).where(W.c.source == name))
    session.execute(delete(ISSUE).where(ISSUE.c.source == name))
    return _rowcount(session.execute(delete(S).where(S.c.name == name))) == 1


def acquire(session: Session, name: str, holder: str, now: datetime, lease_s: float) -> bool:
    """Take the source's lease for `holder` (free, run out, or already its own); False when another holds it."""
    return _rowcount(session.execute(update(S).where(
        S.c.name == name, or_(S.c.holder.is_(None), S.c.lease_until < now, S.c.holder == holder))
        .values(holder=holder, lease_until=now + timedelta(seconds=lease_s)))) == 1


def renew(session: Session, name: str, holder: str, now: datetime, lease_s: float) -> bool:
    return _rowcount(session.execute(update(S).where(S.c.name == name, S.c.holder == holder)
                                     .values(lease_until=now + timedelta(seconds=lease_s)))) == 1


def release(session: Session, name: str, holder: str) -> None:
    session.execute(update(S).where(S.c.name == name, S.c.holder == holder).values(holder=None, lease_until=None))


def record_sync(session: Session, name: str, **values: Any) -> None:
    """Set the source's `last_*` columns (and `transaction_time`)."""
    session.execute(update(S).where(S.c.name == name).values(**values))


def record_held(session: Session, name: str, holder: str, **values: Any) -> bool:
    """Set columns of the source (its export state, its discovered Group, …) only while `holder` holds its lease:
    False when another sync took it (this one must stop, not overwrite what the other records)."""
    return _rowcount(session.execute(update(S).where(S.c.name == name, S.c.holder == holder).values(**values))) == 1


def enrolled(session: Session) -> list[tuple[str, str]]:
    """(patient id, catalogue name) of every enrolment whose subject is not withdrawn from a study."""
    rows = session.execute(select(SUBJECT.c.patient_id, STUDY.c.catalogue)
                           .join(STUDY, STUDY.c.id == SUBJECT.c.study_id)
                           .where(SUBJECT.c.status.notin_(("withdrawn", "ineligible", "not-registered")))
                           .order_by(SUBJECT.c.patient_id)).all()
    return [(r.patient_id, r.catalogue) for r in rows]


def identifiers_of(session: Session, resource_type: str, ids: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    ids = list(ids)
    found: dict[str, list[tuple[str, str]]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        rows = session.execute(select(ID.c.resource_id, ID.c.system, ID.c.value)
                               .where(ID.c.resource_type == resource_type, ID.c.resource_id.in_(ids[start:start + 500]))
                               .order_by(ID.c.resource_id, ID.c.pk)).all()
        for row in rows:
            found[row.resource_id].append((row.system, row.value))
    return found


def watermarks(session: Session, source: str) -> dict[tuple[str, str], EhrWatermarkRecord]:
    rows = session.exec(select(EhrWatermarkRecord).where(W.c.source == source)).scalars()  # type: ignore[call-overload]
    return {(r.patient_id, r.resource_type): r for r in rows}


def set_watermark(session: Session, source: str, patient_id: str, resource_type: str, *, upstream_patient: str | None,
                  last_updated: str | None, now: datetime) -> None:
    """Upsert (the source's lease makes its sync the only writer of its rows)."""
    values = {"upstream_patient": upstream_patient, "last_updated": last_updated, "updated_at": now}
    done = _rowcount(session.execute(update(W).where(W.c.source == source, W.c.patient_id == patient_id,
                                                     W.c.resource_type == resource_type).values(**values)))
    if not done:
        session.execute(W.insert().values(source=source, patient_id=patient_id, resource_type=resource_type, **values))


def add_issue(session: Session, source: str, now: datetime, resource: str, outcome: str) -> None:
    session.execute(ISSUE.insert().values(source=source, at=now, resource=resource, outcome=outcome))


def clear_issues(session: Session, source: str) -> None:
    session.execute(delete(ISSUE).where(ISSUE.c.source == source))


def issues(session: Session, source: str, limit: int) -> tuple[int, list[EhrSyncIssueRecord]]:
    """How many issues the source has, and its latest `limit`."""
    total = session.execute(select(func.count()).select_from(ISSUE).where(ISSUE.c.source == source)).scalar_one()
    rows = session.exec(select(EhrSyncIssueRecord).where(ISSUE.c.source == source)  # type: ignore[call-overload]
                        .order_by(ISSUE.c.pk.desc()).limit(limit)).scalars()
    return total, list(rows)


def copies(session: Session, system: str, resource_type: str, patient_id: str) -> dict[str, str]:
    """Our current copies of a source's resources of `resource_type` about `patient_id`: upstream id → our id."""
    typed = PATIENT_OF[resource_type]
    rows = session.execute(select(ID.c.value, ID.c.resource_id)
                           .join(typed, typed.c.id == ID.c.resource_id)
                           .where(ID.c.resource_type == resource_type, ID.c.system == system,
                                  typed.c.patient_id == patient_id)).all()
    return {r.value: r.resource_id for r in rows}


def owners(session: Session, resource_type: str, system: str, values: list[str]) -> dict[str, str]:
    """Which of `values` (upstream ids) of identifier `system` our current resources of `resource_type` carry:
    upstream id → our id."""
    rows = session.execute(select(ID.c.value, ID.c.resource_id).where(
        ID.c.resource_type == resource_type, ID.c.system == system, ID.c.value.in_(values))).all()
    return {r.value: r.resource_id for r in rows}
