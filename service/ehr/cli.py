"""`trial-fhir sources …` (the upstream FHIR servers this service pulls from) and `trial-fhir sync …` (pull now,
with a progress bar; report how the syncs went). Mistakes are one line and exit code 1, never a traceback; a
bearer token is never printed."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import typer
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from service.ehr.flows import SyncCounts

sources_app = typer.Typer(help="Upstream FHIR servers (EHRs) this service pulls results from.", no_args_is_help=True)
sync_app = typer.Typer(help="Pull from the registered EHRs now, or see how their syncs went.", no_args_is_help=True)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _engine() -> Iterator[Engine]:
    from service.db import make_engine
    from service.settings import get_settings

    engine = make_engine(get_settings().database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@sources_app.command("add")
def add(name: str = typer.Argument(..., help="A short name for the source, e.g. 'seoul-ehr'"),
        base: str = typer.Option(..., "--base", help="Base URL of its FHIR R4 endpoint"),
        auth: str = typer.Option("none", "--auth", help="none | bearer | smart (SMART Backend Services)"),
        token_url: str = typer.Option(None, "--token-url", help="smart: its token endpoint"),
        client_id: str = typer.Option(None, "--client-id", help="smart: the client id it registered for us"),
        key: str = typer.Option(None, "--key", help="smart: file of our private key (JWK or PEM; RSA → RS384, "
                                "EC → ES384); its path is stored, not the key"),
        bearer: str = typer.Option(None, "--bearer", help="bearer: the static token (stored, never printed)"),
        scope: str = typer.Option("system/Patient.rs system/Observation.rs system/AdverseEvent.rs", "--scope",
                                  help="smart: the scopes asked for"),
        group: str = typer.Option(None, "--group", help="an upstream Group id: always pull with Bulk Data "
                                  "Group/{id}/$export (default: the Group holding the matched patients is found "
                                  "upstream by itself)"),
        mode: str = typer.Option("auto", "--mode", help="auto: Bulk Data when the upstream offers Group $export and "
                                 "a Group holds the patients, else searches | search: searches only"),
        no_bulk: bool = typer.Option(False, "--no-bulk", help="never Bulk Data (the same as --mode search)")) -> None:
    """Register an upstream FHIR server to pull from.

    Each sync finds our enrolled patients upstream by identifier. Where the upstream offers Bulk Data (Group
    $export) it exports the upstream Group that holds them (found by `Group?member=`, remembered, looked for again
    when it stops holding them or is gone) and pulls the patients it does not hold by search; an interrupted export
    is resumed by the next sync. Otherwise, or with --mode search, it searches per patient."""
    from service.ehr.service import SourceInvalid, add_source

    pull_mode = "search" if no_bulk else mode
    with _engine() as engine:
        try:
            add_source(engine, name, base, auth=auth, token_url=token_url, client_id=client_id, key_file=key,
                       bearer=bearer, scope=scope if auth == "smart" else None, group_id=group, pull_mode=pull_mode)
        except SourceInvalid as exc:
            _fail(str(exc))
    how = f"bulk Group/{group}" if group else "search" if pull_mode == "search" else "auto: bulk when offered"
    typer.echo(f"source '{name}' added ({auth}, {how}): {base}")


@sources_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """The registered sources (never their secrets)."""
    from rich.console import Console
    from rich.table import Table

    from service.ehr.service import list_sources

    with _engine() as engine:
        sources = list_sources(engine)
    if as_json:
        typer.echo(json.dumps(sources, indent=2))
        return
    table = Table(title="EHR sources")
    for column in ("name", "base URL", "auth", "mode"):
        table.add_column(column)
    for s in sources:
        group = s["group"] or s["discovered_group"]
        found = " found" if not s["group"] and group else ""
        table.add_row(s["name"], s["base_url"], s["auth"], s["mode"] + (f" (Group/{group}{found})" if group else ""))
    Console().print(table)


@sources_app.command("remove")
def remove(name: str = typer.Argument(..., help="The source's name")) -> None:
    """Forget a source and its sync state (what it brought stays)."""
    from service.ehr.service import remove_source

    with _engine() as engine:
        if not remove_source(engine, name):
            _fail(f"no source named '{name}'")
    typer.echo(f"source '{name}' removed")


def how_pulled(counts: "SyncCounts") -> str:
    if counts.group:
        how = f"Bulk Data of Group/{counts.group} ({counts.group_found}"
        how += ", resumed" if counts.resumed else ""
        return how + (f"; {counts.by_search} patients searched)" if counts.by_search else ")")
    return "searched" + (f" ({counts.fallback})" if counts.fallback else "")


@sync_app.command("run")
def run(name: str = typer.Argument(None, help="The source to pull (default: every source)")) -> None:
    """Pull now: each source in turn, with a progress bar. Exit 1 when a sync failed."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from service.ehr.client import UpstreamError
    from service.ehr.flows import SyncBusy, SyncLost
    from service.ehr.service import SourceInvalid, run_sync, source_names
    from service.settings import get_settings

    settings = get_settings()
    console = Console()
    failed = False
    with _engine() as engine:
        names = [name] if name else source_names(engine)
        if not names:
            _fail("no source registered: `trial-fhir sources add NAME --base URL` first")
        for source in names:
            with Progress(TextColumn(f"[bold]{source}" + " {task.description:<16}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("patients", total=None)

                def tick(done: int, total: int, what: str, bar: Progress = bar, task: TaskID = task) -> None:
                    bar.update(task, completed=done, total=total, description=what)
                try:
                    counts = run_sync(engine, settings, source, progress=tick)
                except (SourceInvalid, UpstreamError, SyncBusy, SyncLost) as exc:
                    failed = True
                    typer.secho(f"{source}: {exc}", fg=typer.colors.RED)
                    continue
            typer.echo(f"{source}: {counts.pulled} pulled in {counts.seconds:.1f} s — {counts.created} created, "
                          f"{counts.updated} updated, {counts.unchanged} unchanged, {counts.deleted} deleted, "
                          f"{counts.refused} refused; {counts.patients - counts.not_found - counts.ambiguous} of "
                          f"{counts.patients} patients found upstream; {how_pulled(counts)}")
    if failed:
        raise typer.Exit(1)


@sync_app.command("status")
def status(name: str = typer.Argument(None, help="One source (default: all)"),
           as_json: bool = typer.Option(False, "--json", help="Print JSON (with the refusals' OperationOutcomes)")
           ) -> None:
    """How each source's last sync went, and the upstream resources the core refused (with why)."""
    from rich.console import Console
    from rich.table import Table

    from service.ehr.service import SourceInvalid, status as report

    with _engine() as engine:
        try:
            rows = report(engine, name)
        except SourceInvalid as exc:
            _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="EHR syncs")
    for column in ("source", "last sync", "finished", "how", "pulled", "created", "updated", "unchanged", "deleted",
                   "refused", "error"):
        table.add_column(column)
    for r in rows:
        c = r["counts"] or {}
        how = c.get("mode", "")
        if c.get("group"):
            how += f" Group/{c['group']}" + (" (resumed)" if c.get("resumed") else "")
        elif c.get("fallback"):
            how += f" ({c['fallback']})"
        table.add_row(r["name"], r["status"], r["finished"] or "", how, *(str(c.get(k, "")) for k in (
            "pulled", "created", "updated", "unchanged", "deleted", "refused")), r["error"] or "")
    console = Console()
    console.print(table)
    for r in rows:
        if r["export"]:
            e = r["export"]
            typer.echo(f"{r['name']}: export of Group/{e['group']} under way ({e['files_done']} files stored); the "
                       f"next sync resumes it")
    for r in rows:
        for item in r["latest_issues"]:
            problems = "; ".join(f"{', '.join(i.get('expression') or [])}: {i.get('diagnostics', i.get('code'))}"
                                 for i in item["outcome"].get("issue") or [])
            typer.echo(f"{r['name']}: not stored {item['resource']} — {problems}")
