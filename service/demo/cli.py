"""`trial-fhir demo`: load the synthetic demo trial into a database, or show what it holds."""

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="The synthetic demo trial (34 adults: phase I, 7 to week 4; phase IIa, 27 to week 12; "
                       "NCT01927705-shaped outcome).",
                  no_args_is_help=True)


@app.command()
def load(database_url: str = typer.Option(None, "--database-url",
                                          help="SQLAlchemy URL (default: the settings' DATABASE_URL)"),
         base_url: str = typer.Option(None, help="Base URL written in the Bundle responses (default: settings)")
         ) -> None:
    """Migrate the database, then load the demo trial's data file as FHIR transaction Bundles (studies, one per
    subject, later updates).

    Every resource is a conditional create (or update) on its identifier: loading again adds nothing."""
    from service.db import make_engine, migrate
    from service.demo.data import transactions
    from service.demo.load import load_demo
    from service.settings import get_settings

    settings = get_settings()
    url = database_url or settings.database_url
    engine = make_engine(url)
    console = Console()
    try:
        migrate(engine)
        bundles = transactions()
        with Progress(TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task("studies", total=len(bundles))
            result = load_demo(engine, lambda done, total, what: bar.update(task, completed=done, description=what),
                               base_url=base_url or settings.base_url, max_entries=settings.max_bundle_entries,
                               bundles=bundles)
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
    """Print what the demo trial's data file holds (resources, and per study and arm: subjects, dosed, withdrawn,
    results, adverse events) without writing anything. Its figures: load it, then `trial-fhir summary`."""
    from service.demo.data import counts, demo_bundle, transactions

    bundle = demo_bundle()
    console = Console()
    totals = Table(title="demo trial: resources")
    totals.add_column("resource type")
    totals.add_column("count", justify="right")
    for rtype, n in counts(bundle).items():
        totals.add_row(rtype, str(n))
    console.print(totals)
    bundles = transactions(bundle)
    titles = {e["fullUrl"]: e["resource"]["title"] for e in bundles[0]["entry"]}
    per: dict[tuple[str, str], list[int]] = {}
    for t in bundles[1:-1]:
        resources = [e["resource"] for e in t["entry"]]
        subject = next(r for r in resources if r["resourceType"] == "ResearchSubject")
        row = per.setdefault((titles[subject["study"]["reference"]], subject["assignedArm"]), [0] * 5)
        for i, n in enumerate((1, "start" in (subject.get("period") or {}), subject["status"] == "withdrawn",
                               sum(r["resourceType"] == "Observation" for r in resources),
                               sum(r["resourceType"] == "AdverseEvent" for r in resources))):
            row[i] += int(n)
    arms = Table(title="per study and arm")
    for column in ("study", "arm", "subjects", "dosed", "withdrawn", "results", "adverse events"):
        arms.add_column(column)
    for (title, arm), row in per.items():
        arms.add_row(title.split(" dermatitis, ")[-1].split(" (")[0], arm, *map(str, row))
    console.print(arms)
    console.print(f"later updates (preliminary made final, a correction): {len(bundles[-1]['entry'])}; the figures: "
                  "`trial-fhir demo load`, then `trial-fhir summary NCT01927705`")
