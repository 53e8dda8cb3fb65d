"""CDISC SDTM from the live store: the study's datasets (Dataset-JSON v1.1, SAS XPORT v5) and their Define-XML 2.1.

One pass in one read snapshot (service/db.py `snapshot_connection`): the study's enrolments, counted results, actual
adverse events and administrations are streamed from the database in chunks, each ordered by ResearchSubject id,
and merged subject by subject; each subject's rows of every domain are made (fhir_mappings/sdtm.py) and appended to
the datasets' scratch files (service/sdtm/formats.py). Memory holds one subject's resources at a time.

What a row shows is what the caller may read: a de-identified client's datasets are made from the resources as it
would read them (service/deid: pseudonymous Patient, shifted dates, birth year only).

The catalogue and the responder definitions of a study come from one function each (`catalogue_of`,
`responders_of`), so where they are kept can change without touching the rest.
"""

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from fhir_mappings.adam import ADSL, ADSL_LABEL, Criterion, adam_rows, bds_names, bds_variables
from fhir_mappings.sdtm import (
    ALL_DOMAINS,
    DESIGN_DOMAINS,
    SUBJECT_DOMAINS,
    Design,
    Dosing,
    Event,
    Result,
    Source,
    Subject,
    design_rows,
    studyid_of,
    subject_rows,
)
from fhir_mappings.terminology import Catalogue
from service.db import snapshot_connection
from service.deid.deidentify import Deidentifier
from service.errors import NotFound
from service.sdtm import repository
from service.sdtm.formats import Dataset, define_xml, iso, write_dataset_json, write_xpt

BATCH = 2000
FORMATS = ("json", "xpt")
Progress = Callable[[int, int], None]  # (subjects done, subjects in the study)


def catalogue_of(conn: Connection, study_catalogue: str | None) -> Catalogue:
    """The study's measure catalogue (visits, measures, responders) as its summaries see it (its PlanDefinition's
    current version, compiled once per version): the ONE place the SDTM datasets get it from."""
    from service.catalogue.compiled import catalogue_named
    return catalogue_named(cast(Session, conn), study_catalogue)


def responders_of(catalogue: Catalogue) -> list[Criterion]:
    """The study's responder definitions (its catalogue's `PlanDefinition.goal`s, on its measures): the ONE place
    they come from."""
    keys = {m.key for m in catalogue.measures}
    return [Criterion(r.key, r.measure, r.pct_change_at_most, r.value_at_most, r.drop_at_least)
            for r in catalogue.responders if r.measure in keys]


@dataclass
class Built:
    """The datasets of one pass (rows in scratch files), the STUDYID, title and creation time."""

    datasets: dict[str, Dataset]
    studyid: str
    title: str
    created: datetime

    def close(self) -> None:
        for ds in self.datasets.values():
            ds.close()


def _source(rtype: str, id: str, version: int, updated: datetime | str | None, text: str | None,
            deid: Deidentifier | None, patient: str | None) -> Source:
    content = orjson.loads(text) if text else {}
    if deid is not None:
        content = deid.resource(content, patient)
        if rtype == "Patient":
            id = deid.pseudonym(id)
    if isinstance(updated, str):
        updated = datetime.fromisoformat(updated)
    return Source(rtype, id, version, updated, content)


class _Merged:
    """A stream ordered by subject id: the rows of one subject at a time (subjects asked in ascending order)."""

    def __init__(self, rows: Iterator[Any]) -> None:
        self.rows = rows
        self.next: Any = next(rows, None)

    def take(self, subject_id: str) -> list[Any]:
        taken = []
        while self.next is not None and self.next[0] <= subject_id:
            if self.next[0] == subject_id:
                taken.append(self.next)
            self.next = next(self.rows, None)
        return taken


STANDARDS = ("SDTM", "ADaM")


def build(engine: Engine, study_id: str, *, domains: tuple[str, ...] | None = None, standard: str = "SDTM",
          deid: Deidentifier | None = None, progress: Progress | None = None, batch: int = BATCH) -> Built:
    """The datasets `domains` of the study (None: every dataset of `standard`, SDTM or ADaM), made in one pass in
    one read snapshot (404 for an unknown study, or a dataset name it has not)."""
    with snapshot_connection(engine) as conn:
        return _build(conn, study_id, domains, standard, deid, progress, batch)


def _build(conn: Connection, study_id: str, domains: tuple[str, ...] | None, standard: str,
           deid: Deidentifier | None, progress: Progress | None, batch: int) -> Built:
    found = repository.get_study(conn, study_id)
    if found is None:
        raise NotFound(f"ResearchStudy/{study_id} is not known", expression="ResearchStudy.id")
    catalogue = catalogue_of(conn, found[0])
    study = _source("ResearchStudy", study_id, found[1], found[2], found[3], deid, None)
    arms = tuple((str(a.get("name")), a.get("description")) for a in study.content.get("arm") or ()
                 if a.get("name"))
    design = Design(studyid_of(study.content) or study_id, study, catalogue, arms)
    counted = sorted(catalogue.counted_statuses)
    latest = repository.last_modified(conn, study_id, counted) or study.last_updated
    assert latest is not None, "a stored ResearchStudy has its lastUpdated"
    if latest.tzinfo is not None:  # PostgreSQL: an aware instant in the session's time zone
        latest = latest.astimezone(UTC).replace(tzinfo=None)
    if deid is not None:  # when the server wrote its data says when visits were: a de-identified client gets the year
        latest = datetime(latest.year, 1, 1)
    bds = bds_names(design)
    criteria: dict[str, list[Criterion]] = {}
    for c in responders_of(catalogue):
        criteria.setdefault(c.measure, []).append(c)
    adam = ("ADSL", *bds)
    if domains is None:
        domains = ALL_DOMAINS if standard == "SDTM" else adam
    unknown = [d for d in domains if d not in ALL_DOMAINS and d not in adam]
    if unknown:
        raise NotFound(f"No dataset '{unknown[0]}' for this study: SDTM {', '.join(ALL_DOMAINS)}; ADaM "
                       f"{', '.join(adam)}", expression="dataset")
    datasets: dict[str, Dataset] = {}
    for d in domains:
        if d == "ADSL":
            datasets[d] = Dataset(d, ADSL_LABEL, ADSL, "ADaM")
        elif d in bds:
            label = f"{catalogue.measure(bds[d]).display[:27]} Analysis Data"
            datasets[d] = Dataset(d, label[:40], bds_variables(criteria.get(bds[d], [])), "ADaM")
        else:
            datasets[d] = Dataset(d)
    wanted = set(domains)
    adam_needed = bool(wanted & set(adam))
    subject_rows_needed = bool(wanted & set(SUBJECT_DOMAINS)) or bool(wanted & {"TS"}) or adam_needed
    total = 0
    if progress is not None:
        from sqlalchemy import func, select
        total = conn.execute(select(func.count()).select_from(repository.S)
                             .where(repository.S.c.study_id == study_id)).scalar_one()
    subjects = 0
    first_day0 = ""
    if subject_rows_needed:
        results = _Merged(repository.stream_results(conn, study_id, counted, batch))
        events = _Merged(repository.stream_events(conn, study_id, batch))
        dosings = _Merged(repository.stream_dosings(conn, study_id, batch))
        for row in repository.stream_subjects(conn, study_id, batch):
            sid, patient_id = row[0], row[1]
            subject = Subject(
                enrolment=_source("ResearchSubject", sid, row[5], row[6], row[7], deid, patient_id),
                patient=None if row[8] is None else _source("Patient", patient_id, row[8], row[9], row[10], deid,
                                                            patient_id),
                status=row[2], assigned_arm=row[3], actual_arm=row[4])
            for r in results.take(sid):
                subject.results.append(Result(
                    _source("Observation", r[1], r[10], None, r[11], deid, patient_id), r[2], float(r[3]), r[4],
                    r[5], r[6], r[7], r[8], _utc(r[9])))
            for e in events.take(sid):
                subject.events.append(Event(_source("AdverseEvent", e[1], e[4], None, e[5], deid, patient_id),
                                            bool(e[2]), bool(e[3])))
            for d in dosings.take(sid):
                subject.dosings.append(Dosing(_source(d[1], d[2], d[6], None, d[7], deid, patient_id),
                                              d[3], d[4], d[5]))
            made = subject_rows(design, subject)
            subjects += 1
            if made.rfstdtc and (not first_day0 or made.rfstdtc[:10] < first_day0):
                first_day0 = made.rfstdtc[:10]
            for domain, rows in made.rows.items():
                target = datasets.get(domain)
                if target is not None:
                    target.add_many(rows)
            if adam_needed:
                for domain, rows in adam_rows(design, subject, made, criteria).items():
                    target = datasets.get(domain)
                    if target is not None:
                        target.add_many(rows)
            if progress is not None:
                progress(subjects, total)
    if wanted & set(DESIGN_DOMAINS):
        for domain, rows in design_rows(design, subjects, first_day0).items():
            if domain in datasets:
                for r_ in rows:
                    datasets[domain].add(r_)
    title = str(study.content.get("title") or "")
    return Built(datasets, design.studyid, title, latest)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- use cases --------------------------------------------------------------------------------------------------

def list_datasets(engine: Engine, study_id: str, *, standard: str = "SDTM",
                  deid: Deidentifier | None = None) -> dict[str, Any]:
    """The study's datasets of `standard` (SDTM or ADaM) with their record counts (empty ones included)."""
    built = build(engine, study_id, standard=standard, deid=deid)
    try:
        return {"study": study_id, "studyid": built.studyid, "created": iso(built.created),
                "datasets": [{"name": d, "label": ds.label, "records": ds.records}
                             for d, ds in sorted(built.datasets.items())]}
    finally:
        built.close()


def parse_dataset_name(name: str) -> tuple[str, str]:
    """`DM.json` -> ('DM', 'json'); 404 naming the dataset for a format that is not made here (the name itself is
    checked against the study's datasets when they are made)."""
    stem, _, fmt = name.rpartition(".")
    if not stem or fmt.lower() not in FORMATS:
        raise NotFound(f"No dataset '{name}': each dataset is NAME.json (Dataset-JSON v1.1) or NAME.xpt (SAS "
                       "XPORT v5)", expression="dataset")
    return stem.upper(), fmt.lower()


def write_dataset(engine: Engine, study_id: str, domain: str, fmt: str, out_dir: Path, *,
                  deid: Deidentifier | None = None, standard: str = "SDTM") -> Path:
    """One dataset as a file in `out_dir`: Dataset-JSON (`<domain>.json`) or XPORT v5 (`<domain>.xpt`); 404 for
    a dataset of the other standard."""
    built = build(engine, study_id, domains=(domain,), deid=deid)
    if built.datasets[domain].standard != standard:
        built.close()
        raise NotFound(f"No {standard} dataset '{domain}'", expression="dataset")
    try:
        return _write(built, built.datasets[domain], fmt, out_dir)
    finally:
        built.close()


def _write(built: Built, ds: Dataset, fmt: str, out_dir: Path) -> Path:
    path = out_dir / f"{ds.domain.lower()}.{fmt}"
    if fmt == "json":
        with open(path, "wb", buffering=1 << 20) as out:
            write_dataset_json(ds, out, study_oid=built.studyid, created=built.created)
    else:
        write_xpt(ds, path, created=built.created)
    return path


def write_define(engine: Engine, study_id: str, out_dir: Path, *, deid: Deidentifier | None = None) -> Path:
    built = build(engine, study_id, deid=deid)  # the SDTM datasets
    try:
        path = out_dir / "define.xml"
        path.write_bytes(define_xml(list(built.datasets[d] for d in sorted(built.datasets)),
                                    study_oid=built.studyid, title=built.title, created=built.created))
        return path
    finally:
        built.close()


def export_all(engine: Engine, study_id: str, out_dir: Path, *, deid: Deidentifier | None = None,
               progress: Progress | None = None, on_file: Callable[[str], None] | None = None) -> list[Path]:
    """Every SDTM and ADaM dataset as Dataset-JSON and XPORT v5, and the SDTM define.xml, into `out_dir` (one pass,
    one snapshot; ADaM's in `out_dir/adam`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "adam").mkdir(exist_ok=True)
    with snapshot_connection(engine) as conn:
        found = repository.get_study(conn, study_id)
        if found is None:
            raise NotFound(f"ResearchStudy/{study_id} is not known", expression="ResearchStudy.id")
        design = Design("", Source("ResearchStudy", study_id, 1, datetime.now(UTC), {}),
                        catalogue_of(conn, found[0]), ())
    domains = (*ALL_DOMAINS, "ADSL", *bds_names(design))
    built = build(engine, study_id, domains=domains, deid=deid, progress=progress)
    written = []
    try:
        for domain in sorted(built.datasets):
            ds = built.datasets[domain]
            for fmt in FORMATS:
                written.append(_write(built, ds, fmt, out_dir if ds.standard == "SDTM" else out_dir / "adam"))
                if on_file is not None:
                    on_file(written[-1].name)
        define = out_dir / "define.xml"
        define.write_bytes(define_xml([built.datasets[d] for d in sorted(built.datasets)
                                       if built.datasets[d].standard == "SDTM"],
                                      study_oid=built.studyid, title=built.title, created=built.created))
        written.append(define)
    finally:
        built.close()
    return written


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="trial-fhir-sdtm-"))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
