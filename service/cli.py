"""The `trial-fhir` command line: serve, migrate, demo data, exports and summaries."""

import typer
from typer.core import TyperGroup

from service.settings import Settings, get_settings

#: `--debug`: let an error's traceback through (set by the root callback before any command runs)
DEBUG = False


class HumanErrors(TyperGroup):
    """Every command's failure as one line on stderr saying what is wrong and what to do (service/cli_support.py
    `explain`), exit status non-zero, no traceback unless `--debug`. Typer's own usage errors (a bad option) are
    click's, already one line and exit 2."""

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]  # (typer's Context subclasses click's)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own: a usage error says it in one line
            raise
        except Exception as exc:
            if DEBUG:
                raise
            from service.cli_support import CliError, explain

            try:
                url = get_settings().database_url
            except Exception:  # the settings themselves are what is wrong: explain says so
                url = None
            typer.secho(f"error: {explain(exc, url)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exc.status if isinstance(exc, CliError) else 1) from None


app = typer.Typer(help="trial-fhir: FHIR R4 service for clinical trials", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, cls=HumanErrors)


def _print_version(asked: bool) -> None:
    if asked:
        from service.ops.version import git_revision, version

        typer.echo(f"trial-fhir {version()} (git {git_revision(None)[:12]})")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and git revision, and exit"),
         debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error")) -> None:
    """trial-fhir: FHIR R4 service for clinical trials."""
    global DEBUG
    DEBUG = debug


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Only this machine can reach `host`: a loopback address or name (0.0.0.0 and :: are every interface)."""
    import ipaddress

    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another name: it may resolve to anything
        return False


def anonymous_refusal(settings: Settings, host: str) -> str | None:
    """Why `serve` must not start: access control off (TRIAL_FHIR_AUTH=off) on an address other machines can
    reach, without TRIAL_FHIR_ALLOW_ANONYMOUS=true saying that is meant. None when it may."""
    if settings.auth != "off" or is_loopback(host) or settings.allow_anonymous:
        return None
    return (f"refusing to serve {host} with TRIAL_FHIR_AUTH=off: anyone who can reach it could read and change "
            "every patient's data. Bind 127.0.0.1, or use TRIAL_FHIR_AUTH=smart (register clients with "
            "`trial-fhir clients add`), or set TRIAL_FHIR_ALLOW_ANONYMOUS=true if a gateway in front does the "
            "access control.")


def anonymous_warning(host: str) -> str:
    return (f"WARNING: access control is OFF (TRIAL_FHIR_AUTH=off): every request to {host} is answered without a "
            "token. For development and the demo only.")


@app.command()
def serve(host: str = typer.Option(None, help="Interface to bind (default: TRIAL_FHIR_HOST or 127.0.0.1)"),
          port: int = typer.Option(None, help="Port (default: TRIAL_FHIR_PORT or 8000)"),
          demo: bool = typer.Option(False, "--demo", help="Load the synthetic demo trial if the database has none, "
                                    "and run without access control (unless TRIAL_FHIR_AUTH says otherwise)"),
          workers: int = typer.Option(1, help="Worker processes (PostgreSQL only; SQLite wants one)")) -> None:
    """Run the HTTP service (migrates the database first unless TRIAL_FHIR_MIGRATE_ON_STARTUP=false).

    With TRIAL_FHIR_AUTH=off it binds only a loopback address, unless TRIAL_FHIR_ALLOW_ANONYMOUS=true."""
    import os

    import uvicorn

    settings = get_settings()
    if demo:
        # the app reads its settings from the environment (service.main:app, in each worker): say it there
        os.environ["TRIAL_FHIR_LOAD_DEMO_ON_STARTUP"] = "true"
        if "auth" not in settings.model_fields_set:  # neither the environment nor .env chose
            os.environ["TRIAL_FHIR_AUTH"] = "off"
        get_settings.cache_clear()
        settings = get_settings()
    host = host or settings.host
    if settings.auth == "off":
        refusal = anonymous_refusal(settings, host)
        if refusal is not None:
            typer.secho(refusal, fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        typer.secho(anonymous_warning(host), fg=typer.colors.YELLOW, bold=True, err=True)
        if demo:
            typer.echo(f"demo: the synthetic trial on http://{host}:{port or settings.port}/fhir, no token needed",
                       err=True)
    # server_header: no "server: uvicorn" in answers. proxy_headers: uvicorn would believe X-Forwarded-For/-Proto
    # from 127.0.0.1 (its default); the app believes them from TRIAL_FHIR_TRUSTED_PROXIES only (service/api/http.py)
    # http: uvicorn's httptools protocol with a header read deadline and header caps (service/api/read_timeouts.py)
    from service.api.read_timeouts import PROTOCOL_PATH
    from service.ops.logs import uvicorn_log_config

    if workers > 1 and settings.metrics:
        _multiprocess_metrics(settings)
    # access_log: uvicorn's is replaced by the request log (service/ops/layer.py), with route templates, not paths
    uvicorn.run("service.main:app", host=host, port=port or settings.port, workers=workers, log_level="info",
                server_header=False, proxy_headers=False, http=PROTOCOL_PATH, access_log=False,
                log_config=uvicorn_log_config(settings.log_format))


def _multiprocess_metrics(settings: Settings) -> None:
    """prometheus-client's multiprocess mode for the workers: an empty folder (TRIAL_FHIR_METRICS_DIR, else a
    temporary one), named in PROMETHEUS_MULTIPROC_DIR before the workers start and import the client."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or (str(settings.metrics_dir) if settings.metrics_dir
                                                            else tempfile.mkdtemp(prefix="trial-fhir-metrics-"))
    path = Path(folder)
    if path.exists():
        for stale in path.glob("*.db"):  # another run's values: the counters would start from them
            stale.unlink()
    else:
        path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    shutil.disk_usage(path)  # fails early (a clear OSError) when the folder is unusable


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from service.cli_support import safe_url
    from service.db import make_engine, migrate as run_migrations

    settings: Settings = get_settings()
    run_migrations(make_engine(settings.database_url))
    typer.echo(f"schema up to date: {safe_url(settings.database_url)}")


def _register_subcommands() -> None:
    """Command groups that live beside their domain (demo, export, summary, clients, audit, sources, sync); a
    module with several groups names them `<name>_app`."""
    import importlib

    for module, name in (("service.demo.cli", "demo"), ("service.export.cli", "export"),
                         ("service.stats.cli", "summary"), ("service.auth.cli", "clients"),
                         ("service.audit.cli", "audit"), ("service.ehr.cli", "sources"), ("service.ehr.cli", "sync"),
                         ("service.hl7.cli", "mllp"), ("service.sdtm.cli", "sdtm")):
        try:
            sub = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        app.add_typer(getattr(sub, f"{name}_app", None) or sub.app, name=name)


_register_subcommands()


def main() -> None:
    app()
