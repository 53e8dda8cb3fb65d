"""`trial-fhir demo`: load the synthetic demo trial into a database, or show what it holds."""

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="The synthetic demo trial (34 adults, two dose arms, NCT01927705-shaped outcome).",
                  no_args_is_help=True)


@app.command()
def load(database_url: str = typer.Option(None, "--database-url",
                                          help="SQLAlchemy URL (default: the settings' DATABASE_URL)"),
         base_url: str = typer.Option(None, help="Base URL written in the Bundle responses (default: settings)")
         ) -> None:
    """Migrate the database, then load the demo trial as FHIR transaction Bundles (one per subject).

    Every resource is a conditional create on its identifier: loading again adds nothing."""
    from service.db import make_engine, migrate
    from service.demo.cohort import build_cohort
    from service.demo.load import load_demo
    from service.settings import get_settings

    settings = get_settings()
    url = database_url or settings.database_url
    engine = make_engine(url)
    console = Console()
    try:
        migrate(engine)
        cohort = build_cohort()
        with Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("study", total=len(cohort.subjects) + 1)
            result = load_demo(engine, lambda done, total, what: bar.update(task, completed=done, description=what),
                               base_url=base_url or settings.base_url, max_entries=settings.max_bundle_entries,
                               cohort=cohort)
    finally:
        engine.dispose()
    table = Table(title=f"demo trial loaded into {engine.url.render_as_string(hide_password=True)}")
    table.add_column("resource type")
    table.add_column("created", justify="right")
    table.add_column("already there", justify="right")
    for rtype, n in result["created"].items():
        table.add_row(rtype, str(n), str(result["existing"][rtype]))
    console.print(table)


@app.command()
def show() -> None:
    """Print what the demo trial holds (counts per arm and visit, week-12 outcome) without writing anything."""
    from service.demo.cohort import ARMS, build_cohort, counts, outcome_shape

    cohort = build_cohort()
    console = Console()
    totals = Table(title="demo trial: resources")
    totals.add_column("resource type")
    totals.add_column("count", justify="right")
    for rtype, n in counts(cohort).items():
        totals.add_row(rtype, str(n))
    console.print(totals)
    arms = Table(title="per arm")
    for column in ("arm", "dose", "subjects", "withdrawn", "results (baseline / wk 4 / wk 12)", "adverse events"):
        arms.add_column(column)
    for arm, dose in ARMS:
        members = [s for s in cohort.subjects if s.subject.arm == arm]
        per_visit = [sum(1 for s in members for m in s.measurements if m.record.visit == v)
                     for v in ("baseline", "week-4", "week-12")]
        arms.add_row(arm, dose, str(len(members)), str(sum(s.subject.status == "withdrawn" for s in members)),
                     " / ".join(map(str, per_visit)), str(sum(len(s.adverse_events) for s in members)))
    console.print(arms)
    shape = outcome_shape(cohort)
    outcome = Table(title="week 12: EASI-50 rate and mean % change from baseline")
    outcome.add_column("measure")
    for arm, _ in ARMS:
        outcome.add_column(arm, justify="right")
    for key in shape[ARMS[0][0]]:
        cells = [f"{shape[arm][key]:.0%}" if key == "EASI-50" else
                 str(shape[arm][key]) if key == "n" else f"{shape[arm][key]:+.1f}" for arm, _ in ARMS]
        outcome.add_row(key, *cells)
    console.print(outcome)
