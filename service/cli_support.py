"""What every `trial-fhir` command shares: errors a person can act on, and naming a study by its id or its registry
number (the NCT identifier).

A command raises `CliError("what is wrong; what to do")` for what it finds itself; `explain(exc)` turns anything
else that ends a command (a database that is wrong or unreachable, a schema never migrated, an invalid setting, a
FHIR error of the core) into one such line. `service.cli.main` prints it, without a traceback unless `--debug`, and
exits non-zero.
"""

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url


class CliError(Exception):
    """A command's failure, said in one line; `status` is the exit status (2: the command line was wrong)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def safe_url(url: str) -> str:
    """The database URL without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(an unreadable URL)"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def explain(exc: BaseException, database_url: str | None) -> str:
    """One line saying what went wrong and what to do about it."""
    from pydantic import ValidationError

    from service.errors import FhirError, NotFound

    where = safe_url(database_url) if database_url else "the database"
    if isinstance(exc, CliError):
        return str(exc)
    if isinstance(exc, ValidationError):
        wrong = "; ".join(f"TRIAL_FHIR_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                          for e in exc.errors())
        return f"a setting is not valid ({wrong}): fix it in the environment or .env"
    if isinstance(exc, sa_exc.ArgumentError | sa_exc.NoSuchModuleError) or (
            isinstance(exc, ValueError) and "URL" in str(exc)):
        return (f"DATABASE_URL is not a database URL this service can use ({_first_line(exc)}): give "
                "sqlite:///path/to/file.db or postgresql+psycopg://user@host:5432/dbname")
    if isinstance(exc, sa_exc.ProgrammingError | sa_exc.OperationalError) and _missing_table(exc):
        return f"{where} holds no trial-fhir schema (or an old one): run `trial-fhir migrate` first"
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or (
            isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated):
        return (f"cannot reach the database {where} ({_first_line(exc)}): check DATABASE_URL (host, port, user, "
                "database name) and that the database is running")
    if isinstance(exc, NotFound):
        return f"{exc}: `trial-fhir summary` lists the studies"
    if isinstance(exc, FhirError):
        return str(exc)
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return f"{exc.strerror}: {exc.filename}"
    return f"{type(exc).__name__}: {_first_line(exc)} (run with --debug for the traceback)"


def _missing_table(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", None) or exc).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


def studies(session: Any) -> list[tuple[str, str, str]]:
    """(id, registry numbers, title) of every study, by id."""
    from sqlalchemy import select

    from service.store.models import IdentifierRecord, table_of
    from service.trial.models import StudyRecord

    numbers: dict[str, list[str]] = {}
    identifier, study = table_of(IdentifierRecord), table_of(StudyRecord)
    for rid, value in session.execute(select(identifier.c.resource_id, identifier.c.value)
                                      .where(identifier.c.resource_type == "ResearchStudy")):
        numbers.setdefault(rid, []).append(value)
    return [(sid, ", ".join(sorted(numbers.get(sid, []))), title or "")
            for sid, title in session.execute(select(study.c.id, study.c.title).order_by(study.c.id))]


def study_id_for(session: Any, key: str) -> str:
    """The id of the study `key` names, by id or registry number (`NCT01927705`, or `system|value`); a CliError
    naming the studies there are when none matches."""
    from service.search.service import resolve_study
    from service.trial.models import StudyRecord

    found = resolve_study(session, key)
    if session.get(StudyRecord, found) is not None:
        return found
    there = studies(session)
    listed = "; ".join(f"{sid} ({numbers})" if numbers else sid for sid, numbers, _ in there[:10])
    raise CliError(f"no study '{key}' in the database: give a study id or NCT number"
                   + (f", one of: {listed}" if there else " (it holds none yet: `trial-fhir demo load` loads one)"))
