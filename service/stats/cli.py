"""`trial-fhir summary [STUDY_ID] [--csv FILE|-]`: the study summary as terminal tables, or as tidy CSV."""

import sys
from pathlib import Path

import typer

app = typer.Typer(help="Efficacy and safety summary of a study (per arm and visit).", no_args_is_help=False)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(low: float | None, high: float | None, digits: int = 2) -> str:
    return "–" if low is None or high is None else f"{low:.{digits}f} – {high:.{digits}f}"


@app.callback(invoke_without_command=True, context_settings={"allow_interspersed_args": True}, subcommand_metavar="")
def summary(
    study_id: str = typer.Argument(None, metavar="STUDY", help="The study: its id or its NCT number (default: the "
                                   "only study in the database; with several, they are listed)"),
    csv: str = typer.Option(None, "--csv", help="Write the tidy CSV (arm,visit,measure,statistic,value,unit,versus) "
                            "to this file, or '-' for stdout, instead of printing tables"),
) -> None:
    """Print the summary of a study as tables, or write it as tidy CSV."""
    from service.cli_support import CliError, studies, study_id_for
    from service.db import make_engine, read_session
    from service.settings import get_settings
    from service.stats import service

    engine = make_engine(get_settings().database_url)
    try:
        with read_session(engine) as session:
            if study_id is None:
                there = studies(session)
                if not there:
                    raise CliError("the database holds no study yet: load one (`trial-fhir demo load`, or POST a "
                                   "ResearchStudy)")
                if len(there) > 1:
                    if csv is not None:
                        raise CliError(f"the database holds {len(there)} studies: name one (trial-fhir summary "
                                       f"STUDY --csv …), e.g. {there[0][1] or there[0][0]}", status=2)
                    _print_studies(there)
                    return
                study_id = there[0][0]
            result = service.summarize_study(session, study_id_for(session, study_id))
    finally:
        engine.dispose()

    if csv is not None:
        if csv == "-":
            service.write_csv(result, sys.stdout)
        else:
            with Path(csv).open("w", newline="", encoding="utf-8") as out:
                service.write_csv(result, out)
            typer.echo(f"wrote {csv}", err=True)
        return
    _print_tables(result)


def _print_studies(there: list[tuple[str, str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("study id", "NCT / identifiers", "title", title=f"{len(there)} studies: give one, e.g. "
                  f"`trial-fhir summary {there[0][1].split(', ')[0] or there[0][0]}`")
    for row in there:
        table.add_row(*row)
    Console().print(table)


def _print_tables(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{result.title or result.study_id}[/bold]  ({result.study_id}, catalogue "
                  f"{result.catalogue}, {result.period_start or '–'} … {result.period_end or '–'})")
    arms = Table(title="Arms")
    for col in ("arm", "dose", "enrolled", "completed", "withdrawn"):
        arms.add_column(col, justify="left" if col in ("arm", "dose") else "right")
    for a in result.arms:
        arms.add_row(a.name, a.dose or "", str(a.enrolled), str(a.completed), str(a.withdrawn))
    console.print(arms)

    efficacy = Table(title="Efficacy by visit (observed: counted results; change from baseline, its 95% CI)")
    for col in ("measure", "unit", "arm", "visit", "n", "mean", "sd", "median", "min", "max", "Δ mean", "95% CI",
                "Δ%"):
        efficacy.add_column(col, justify="left" if col in ("measure", "unit", "arm", "visit") else "right")
    for m in result.measures:
        for a in result.arms:
            for s in a.measures:
                if s.measure == m.key:
                    efficacy.add_row(m.key, m.unit_display or m.unit, a.name, s.visit, str(s.n), _fmt(s.mean),
                                     _fmt(s.sd), _fmt(s.median), _fmt(s.min), _fmt(s.max), _fmt(s.mean_change),
                                     _interval(s.mean_change_ci_low, s.mean_change_ci_high),
                                     _fmt(s.mean_pct_change, 1))
        efficacy.add_section()
    console.print(efficacy)

    responders = Table(title="Responders (95% Wilson interval)")
    for col in ("responder", "population", "arm", "visit", "n", "observed", "responders", "rate", "95% CI"):
        responders.add_column(col, justify="left" if col in ("responder", "population", "arm", "visit") else "right")
    for a in result.arms:
        for r in a.responders:
            ci = "–" if r.ci_low is None else f"{100 * r.ci_low:.1f}–{100 * r.ci_high:.1f}%"
            rate = "–" if r.rate is None else f"{100 * r.rate:.1f}%"
            responders.add_row(r.measure, "NRI" if r.population == "non-responder-imputation" else r.population,
                               a.name, r.visit, str(r.n), str(r.n_observed), str(r.responders), rate, ci)
    console.print(responders)

    safety = Table(title="Safety (actual adverse events): subjects / events")
    safety.add_column("arm")
    keys = [s.measure for s in result.arms[0].safety] if result.arms else []
    for key in keys:
        safety.add_column(key, justify="right")
    for a in result.arms:
        safety.add_row(a.name, *(f"{s.subjects} / {s.events}" for s in a.safety))
    console.print(safety)

    for c in result.comparisons:
        table = Table(title=f"Dose comparison: {c.arm} vs {c.versus}")
        for col in ("figure", "visit", "difference", "p"):
            table.add_column(col, justify="left" if col in ("figure", "visit") else "right")
        for r in c.responders:
            table.add_row(f"{r.measure} rate", r.visit, _fmt(r.rate_difference, 3), _fmt(r.p_value, 4))
        for r in c.pct_change:
            table.add_row(f"{r.measure} % change", r.visit, _fmt(r.pct_change_difference, 1), _fmt(r.p_value, 4))
        console.print(table)
