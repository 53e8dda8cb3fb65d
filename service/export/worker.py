"""Exports as background jobs (service/jobs): the `export` job kind, and the runner of each app process.

Each app process runs one JobRunner thread (`start_job_runner`) with the kinds this service knows (exports today).
Disable it with `TRIAL_FHIR_EXPORT_WORKER=false` (e.g. API-only replicas): jobs then wait for a replica that runs
one."""

import logging
from functools import partial

from sqlalchemy.engine import Engine

from service.deid.deidentify import Deidentifier
from service.deid.service import deidentifier_from
from service.export import service
from service.jobs.runner import JobContext, JobKind, JobRunner
from service.replica import ReadRouter
from service.settings import Settings

log = logging.getLogger("trial_fhir.export")


def export_kind(engine: Engine, settings: Settings, reads: ReadRouter | None = None) -> JobKind:
    """The `export` job kind: its handler writes one export (service.export.service.run_export), reading its data
    where `reads` says (the read replica when it holds everything committed before the kick-off); a failed export's
    status says why; each loop expires old exports."""
    made: list[Deidentifier] = []

    def deidentifier() -> Deidentifier:
        """The Deidentifier of de-identified jobs, made when the first one runs (it reads the secret)."""
        if not made:
            made.append(deidentifier_from(settings, engine))
        return made[0]

    def run(ctx: JobContext):
        return service.run_export(engine, settings.export_dir, ctx, batch=settings.export_batch_rows,
                                  deid=deidentifier,
                                  source=None if reads is None else reads.export_source)

    return JobKind(service.KIND, run, on_failed=partial(service.export_failed, settings.export_dir),
                   error=service.job_error,
                   housekeeping=partial(service.housekeeping, engine, settings.export_dir,
                                        retention_s=settings.export_retention_hours * 3600))


def job_kinds(engine: Engine, settings: Settings, reads: ReadRouter | None = None) -> list[JobKind]:
    """Every kind of background job this service runs."""
    from service.catalogue.recompute import recompute_kind
    from service.ehr.service import sync_kind
    return [export_kind(engine, settings, reads), sync_kind(engine, settings), recompute_kind(engine)]


class ExportWorker(JobRunner):
    """A runner of this service's jobs (the name it had when exports were its only work)."""

    def __init__(self, engine: Engine, settings: Settings, reads: ReadRouter | None = None, **options) -> None:
        super().__init__(engine, settings, job_kinds(engine, settings, reads), **options)


def start_job_runner(engine: Engine, settings: Settings, reads: ReadRouter | None = None) -> JobRunner | None:
    """This process's runner, started; None when TRIAL_FHIR_EXPORT_WORKER=false."""
    return ExportWorker(engine, settings, reads).start() if settings.export_worker else None
