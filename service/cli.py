"""The `trial-fhir` command line: serve, migrate, demo data, exports and summaries."""

import typer

from service.settings import Settings, get_settings

app = typer.Typer(help="trial-fhir: FHIR R4 service for clinical trials", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


@app.command()
def serve(host: str = typer.Option(None, help="Interface to bind (default: TRIAL_FHIR_HOST or 127.0.0.1)"),
          port: int = typer.Option(None, help="Port (default: TRIAL_FHIR_PORT or 8000)"),
          demo: bool = typer.Option(False, "--demo", help="Load the synthetic demo trial if the database has none"),
          workers: int = typer.Option(1, help="Worker processes (PostgreSQL only; SQLite wants one)")) -> None:
    """Run the HTTP service (migrates the database first unless TRIAL_FHIR_MIGRATE_ON_STARTUP=false)."""
    import os

    import uvicorn

    settings = get_settings()
    if demo:
        os.environ["TRIAL_FHIR_LOAD_DEMO_ON_STARTUP"] = "true"
        get_settings.cache_clear()
        settings = get_settings()
    uvicorn.run("service.main:app", host=host or settings.host, port=port or settings.port, workers=workers,
                log_level="info")


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from service.db import make_engine, migrate as run_migrations

    settings: Settings = get_settings()
    run_migrations(make_engine(settings.database_url))
    typer.echo(f"schema up to date: {settings.database_url}")


def _register_subcommands() -> None:
    """Command groups that live beside their domain (demo, export, summary, audit)."""
    import importlib

    for module, name in (("service.demo.cli", "demo"), ("service.export.cli", "export"),
                         ("service.stats.cli", "summary"), ("service.audit.cli", "audit")):
        try:
            sub = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        app.add_typer(sub.app, name=name)


_register_subcommands()


def main() -> None:
    app()
