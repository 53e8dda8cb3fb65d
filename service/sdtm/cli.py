"""`trial-fhir sdtm export STUDY OUT/`: every SDTM dataset of a study (Dataset-JSON v1.1 and SAS XPORT v5) and
define.xml, written into a folder with a progress bar. Runs in this process, on the configured database; the
operator's own command line, so the data is not de-identified (a client's reads go through the HTTP routes)."""

import time
from pathlib import Path

import typer

app = typer.Typer(help="CDISC SDTM datasets of a study (Dataset-JSON, XPT, Define-XML).", no_args_is_help=True)


@app.command("export")
def export(
    study: str = typer.Argument(..., metavar="STUDY", help="The study: its id or its NCT number"),
    out: Path = typer.Argument(..., help="Folder to write the datasets into (created if needed)"),
) -> None:
    """Write every SDTM dataset of STUDY into OUT: <domain>.json, <domain>.xpt and define.xml."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table
    from sqlmodel import Session

    from service.cli_support import study_id_for
    from service.db import make_engine
    from service.sdtm import service
    from service.settings import get_settings

    console = Console(stderr=True)
    engine = make_engine(get_settings().database_url)
    try:
        with Session(engine) as session:
            study_id = study_id_for(session, study)  # a CliError names the studies there are
        started = time.perf_counter()
        with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console) as bar:
            subjects = bar.add_task("subjects", total=None)
            files = bar.add_task("files", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(subjects, completed=done, total=max(total, 1))

            written = service.export_all(engine, study_id, out, progress=progress,
                                         on_file=lambda name: bar.advance(files))
            bar.update(files, total=len(written), completed=len(written))
    finally:
        engine.dispose()
    table = Table("file", "bytes")
    for path in written:
        table.add_row(str(path), str(path.stat().st_size))
    Console().print(table)
    console.print(f"{len(written)} files in {time.perf_counter() - started:.1f} s")
