"""The export worker: a thread in each app process that claims queued export jobs from the database and
runs them. Woken at once by a kick-off in the same process, and otherwise polling every
`settings.export_poll_interval_s`, so jobs submitted to another replica (or left queued by a stopped
one) are picked up too. Disable it with `TRIAL_FHIR_EXPORT_WORKER=false` (e.g. API-only replicas)."""

import logging
import os
import socket
import threading
import uuid

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.deid.deidentify import Deidentifier
from service.deid.service import deidentifier_from
from service.export import repository, service
from service.replica import ReadRouter
from service.settings import Settings

log = logging.getLogger("trial_fhir.export")


class ExportWorker:
    def __init__(self, engine: Engine, settings: Settings, reads: ReadRouter | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.reads = reads  # where each job reads its data (the read replica when it is fresh enough)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="export-worker", daemon=True)
        self._deid: Deidentifier | None = None

    def deidentifier(self) -> Deidentifier:
        """The Deidentifier of de-identified jobs, made when the first one runs (it reads the secret)."""
        if self._deid is None:
            self._deid = deidentifier_from(self.settings, self.engine)
        return self._deid

    def start(self) -> "ExportWorker":
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current batch; a job in progress goes back to the queue."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def run_once(self) -> bool:
        """Housekeeping, then claim and run one job; True when a job ran."""
        s = self.settings
        service.housekeeping(self.engine, s.export_dir, stale_after_s=s.export_stale_after_s,
                             retention_s=s.export_retention_hours * 3600)
        with Session(self.engine.execution_options(write=True)) as session:
            job_id = repository.claim_job(session, self.name, service.utcnow())
        if job_id is None:
            return False
        log.info("export %s claimed by %s", job_id, self.name)
        status = service.run_job(self.engine, s.export_dir, job_id, self.name, stop=self._stop,
                                 batch=s.export_batch_rows, deid=self.deidentifier,
                                 source=None if self.reads is None else self.reads.export_source)
        log.info("export %s %s", job_id, status)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.run_once():
                    continue
            except Exception:  # noqa: BLE001 — a database hiccup must not kill the worker
                log.exception("export worker %s: error while polling", self.name)
            self._wake.wait(self.settings.export_poll_interval_s)
            self._wake.clear()


def start_export_worker(engine: Engine, settings: Settings, reads: ReadRouter | None = None) -> ExportWorker | None:
    return ExportWorker(engine, settings, reads).start() if settings.export_worker else None
