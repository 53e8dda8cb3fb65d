"""SQL behind the summaries: aggregates and one ranked pass over the typed rows (never the FHIR JSON).

Tables read: `study`, `study_arm`, `research_subject` (its `arm` column is actualArm else assignedArm),
`measurement` (value in the canonical unit, study day, visit, status) and `adverse_event`.
"""

from collections.abc import Sequence
from datetime import date

from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlmodel import Session

from service.adverse_event.models import AdverseEventRecord
from service.observation.models import MeasurementRecord
from service.trial.models import ArmRecord, StudyRecord, SubjectRecord

M = MeasurementRecord.__table__
S = SubjectRecord.__table__
A = ArmRecord.__table__
AE = AdverseEventRecord.__table__


def get_study(session: Session, study_id: str) -> StudyRecord | None:
    return session.get(StudyRecord, study_id)


def find_arms(session: Session, study_id: str) -> list[tuple[str, str | None]]:
    """(name, description) of the study's arms, by name."""
    rows = session.execute(select(A.c.name, A.c.description).where(A.c.study_id == study_id).order_by(A.c.name))
    return [(r[0], r[1]) for r in rows]


def count_subjects_by_arm(session: Session, study_id: str, last_visit: str | None, counted: Sequence[str],
                          completed_statuses: Sequence[str]) -> list[tuple[str, int, int, int]]:
    """(arm, enrolled, withdrawn, completed) per arm; subjects without an arm are left out.

    completed = not withdrawn, and either a status in `completed_statuses` or a counted result at `last_visit`.
    """
    has_last = literal(False)
    if last_visit is not None:
        has_last = exists().where(M.c.subject_id == S.c.id, M.c.visit == last_visit, M.c.status.in_(list(counted)))
    completed = and_(S.c.status != "withdrawn", or_(S.c.status.in_(list(completed_statuses)), has_last))
    query = (select(S.c.arm, func.count(),
                    func.sum(case((S.c.status == "withdrawn", 1), else_=0)),
                    func.sum(case((completed, 1), else_=0)))
             .where(S.c.study_id == study_id, S.c.arm.is_not(None)).group_by(S.c.arm))
    return [(r[0], int(r[1]), int(r[2] or 0), int(r[3] or 0)) for r in session.execute(query)]


def find_visit_values(session: Session, study_id: str, visits: Sequence[tuple[str, int]],
                      counted: Sequence[str]) -> list[tuple]:
    """One row per subject and measure: (arm, measure, value at visits[0], value at visits[1], …).

    Only counted statuses and the given visits (name, target day). With several values of one measure in a
    visit window the one closest to the target day counts; on a tie the later one (later day, then later
    time, then the larger id so the choice is deterministic). A window function does the choice in SQL.
    """
    names = [name for name, _ in visits]
    target = case({name: day for name, day in visits}, value=M.c.visit)
    rank = func.row_number().over(
        partition_by=(M.c.subject_id, M.c.measure, M.c.visit),
        order_by=(func.abs(M.c.study_day - target), M.c.study_day.desc(), M.c.effective.desc(), M.c.id.desc()),
    ).label("rank")
    ranked = (select(M.c.subject_id, M.c.measure, M.c.visit, M.c.value, rank)
              .where(M.c.study_id == study_id, M.c.visit.in_(names), M.c.status.in_(list(counted)))
              .subquery("ranked"))
    columns = [func.max(case((ranked.c.visit == name, ranked.c.value))).label(f"v{i}") for i, name in enumerate(names)]
    query = (select(S.c.arm, ranked.c.measure, *columns)
             .select_from(ranked.join(S, S.c.id == ranked.c.subject_id))
             .where(ranked.c.rank == 1, S.c.arm.is_not(None))
             .group_by(S.c.arm, ranked.c.subject_id, ranked.c.measure))
    return session.execute(query).all()


def count_adverse_events_by_arm(session: Session, study_id: str) -> list[tuple]:
    """Per arm: (arm, then subjects and events for: any, serious, severe, related, withdrawal).

    Only `actuality = actual` events count.
    """
    kinds = [None, AE.c.seriousness == "serious", AE.c.severity == "severe", AE.c.related.is_(True),
             AE.c.caused_withdrawal.is_(True)]
    columns = []
    for cond in kinds:
        if cond is None:
            columns += [func.count(func.distinct(AE.c.subject_id)), func.count()]
        else:
            columns += [func.count(func.distinct(case((cond, AE.c.subject_id)))), func.sum(case((cond, 1), else_=0))]
    query = (select(S.c.arm, *columns).select_from(AE.join(S, S.c.id == AE.c.subject_id))
             .where(AE.c.study_id == study_id, AE.c.actuality == "actual", S.c.arm.is_not(None))
             .group_by(S.c.arm))
    return [(r[0], *(int(v or 0) for v in r[1:])) for r in session.execute(query)]


def find_period(session: Session, study_id: str) -> tuple[date | None, date | None]:
    """Earliest and latest of the subjects' day 0 and the results' local dates."""
    subjects = session.execute(select(func.min(S.c.day0), func.max(S.c.day0)).where(S.c.study_id == study_id)).one()
    results = session.execute(select(func.min(M.c.local_date), func.max(M.c.local_date))
                              .where(M.c.study_id == study_id)).one()
    starts = [_as_date(d) for d in (subjects[0], results[0]) if d is not None]
    ends = [_as_date(d) for d in (subjects[1], results[1]) if d is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def _as_date(value) -> date:
    # SQLite hands aggregate dates back as ISO text
    return date.fromisoformat(value) if isinstance(value, str) else value
