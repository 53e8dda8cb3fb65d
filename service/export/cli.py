"""`trial-fhir export`: the same Bulk Data export as `$export`, written straight to a folder, with a
progress bar. Runs in this process (no job row, no server needed), on the configured database."""

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(help="Bulk Data export (NDJSON, one file per type) to a folder.")


@app.command("run")
def export(
    out: Path = typer.Argument(..., help="Folder to write <Type>.ndjson files into (created if needed)"),
    group: str = typer.Option(None, "--group", "-g", help="Export one study's cohort Group (the study's id "
                              "or NCT number); default: everything"),
    types: list[str] = typer.Option(None, "--type", "-t", help="Resource type(s) to export (repeat or comma-separate)"),
    since: str = typer.Option(None, help="Only resources changed after this instant, e.g. 2024-01-10T00:00:00Z"),
    type_filters: list[str] = typer.Option(None, "--type-filter", help="e.g. 'Observation?code=EASI&date=ge2024-02'"),
    elements: str = typer.Option(None, help="Top-level elements to keep, e.g. 'Observation.code,status' (_elements)"),
    patient_level: bool = typer.Option(False, "--patients", help="Patient-level export: every Patient and the "
                                       "resources about them (not the studies)"),
    batch: int = typer.Option(None, help="Rows fetched per round trip (default: TRIAL_FHIR_EXPORT_BATCH_ROWS)"),
) -> None:
    """Export stored resources as NDJSON into OUT, with the $export parameters' meaning."""
    from sqlmodel import Session

    from service.cli_support import study_id_for
    from service.db import make_engine
    from service.errors import FhirError
    from service.export import service
    from service.settings import get_settings

    settings = get_settings()
    console = Console(stderr=True)
    params = [("_type", t) for t in types or []] + [("_typeFilter", f) for f in type_filters or []]
    if since:
        params.append(("_since", since))
    if elements:
        params.append(("_elements", elements))
    if patient_level and group is not None:
        console.print("[red]error:[/red] --patients and --group are two different exports: choose one")
        raise typer.Exit(2)
    try:
        spec = service.parse_export_request(params, "respond-async", group,
                                            level="patient" if patient_level else None)
    except FhirError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    engine = make_engine(settings.database_url)
    if group is not None:
        with Session(engine) as session:
            group = study_id_for(session, group)  # its id or its NCT number; a CliError names the studies there are
            spec = service.parse_export_request(params, "respond-async", group,
                                                level="patient" if patient_level else None)
    tasks: dict[str, TaskID] = {}
    started = time.perf_counter()
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        def on_start(totals: dict[str, int]) -> None:
            for rtype, total in totals.items():
                tasks[rtype] = bar.add_task(rtype, total=total or 1, completed=0 if total else 1)

        def progress(rtype: str, done: int, total: int) -> None:
            bar.update(tasks[rtype], completed=done, total=max(total, 1))

        transaction_time, outputs = service.write_export(engine, spec, out, batch=batch or settings.export_batch_rows,
                                                         progress=progress, on_start=on_start)
        for task in tasks.values():
            bar.update(task, completed=bar.tasks[task].total)
    elapsed = time.perf_counter() - started
    table = Table("type", "resources", "MB", "file", title=f"transactionTime {transaction_time.isoformat()}")
    for o in outputs:
        table.add_row(o["type"], str(o["count"]), f"{o['bytes'] / 1e6:.1f}", str(out / o["file"]))
    Console().print(table)
    size = sum(o["bytes"] for o in outputs)
    console.print(f"{sum(o['count'] for o in outputs)} resources, {size / 1e6:.1f} MB in {elapsed:.1f} s "
                  f"({size / 1e6 / max(elapsed, 1e-9):.0f} MB/s)")
    engine.dispose()
