"""`trial-fhir clients …`: register the SMART Backend Services clients of the built-in authorisation server, list
and disable them, and rotate the server's token signing key. Mistakes (a bad scope, a bad JWKS file, an unknown
client id) are one line for the person typing and exit code 1, never a traceback."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

app = typer.Typer(help="Clients of the built-in SMART Backend Services authorisation server, and its signing keys.",
                  no_args_is_help=True)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _study_ids(engine, keys: list[str]) -> list[str]:
    """Each `--study` as the study's id: an NCT number (or any identifier) naming one study becomes its id; anything
    else is kept as given (a study id registered before the study is loaded)."""
    from sqlmodel import Session

    from service.search.service import resolve_study

    with Session(engine) as session:
        return [resolve_study(session, key) for key in keys]


@contextmanager
def _engine() -> Iterator[Engine]:
    """The configured database; a missing auth table (an old schema) becomes a hint to migrate."""
    from service.db import make_engine
    from service.settings import get_settings

    engine = make_engine(get_settings().database_url)
    try:
        yield engine
    except (OperationalError, ProgrammingError) as exc:
        if "auth_" in str(exc):
            _fail("the database has no client tables yet: run `trial-fhir migrate` first")
        raise
    finally:
        engine.dispose()


@app.command("add")
def add(
    name: str = typer.Argument(..., help="What the client is, e.g. 'Seoul EHR gateway'"),
    scope: str = typer.Option(..., "--scope", help="Scopes it may ask for, space-separated, e.g. "
                              "'system/Observation.cruds system/Patient.rs'"),
    jwks: Path = typer.Option(None, "--jwks", help="File holding the client's public keys (a JWKS)"),
    jwks_url: str = typer.Option(None, "--jwks-url", help="URL where the client publishes its JWKS"),
    studies: list[str] = typer.Option(None, "--study", help="A study it may see: its id or NCT number (repeat); "
                                      "none: every study"),
    deidentified: bool = typer.Option(False, "--deidentified", help="It sees de-identified data only"),
    as_json: bool = typer.Option(False, "--json", help="Print the registration as JSON"),
) -> None:
    """Register a client; prints its client_id (the `iss` and `sub` of its assertions)."""
    from service.auth.clients import ClientError, add_client

    if (jwks is None) == (jwks_url is None):
        _fail("give exactly one of --jwks FILE and --jwks-url URL")
    keys = None
    if jwks is not None:
        try:
            keys = json.loads(jwks.read_text(encoding="utf-8"))
        except OSError as exc:
            _fail(f"cannot read the JWKS file {str(jwks)!r}: {exc.strerror or exc}")
        except (ValueError, UnicodeDecodeError) as exc:
            _fail(f"the JWKS file {str(jwks)!r} is not JSON: {exc}")
    with _engine() as engine:
        studies = _study_ids(engine, studies or [])
        try:
            client = add_client(engine, name, scope, jwks=keys, jwks_url=jwks_url, studies=tuple(studies),
                                deidentified=deidentified)
        except ClientError as exc:
            _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(client.summary(), indent=2))
    else:
        typer.echo(f"registered {client.name!r}: client_id {client.client_id}")
        typer.echo(f"  scope: {client.scope}")
        typer.echo(f"  studies: {', '.join(client.studies) or 'every study'}"
                   f"{'  (de-identified)' if client.deidentified else ''}")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print the clients as a JSON array")) -> None:
    """The registered clients."""
    from service.auth.clients import list_clients

    with _engine() as engine:
        clients = list_clients(engine)
    if as_json:
        typer.echo(json.dumps([c.summary() for c in clients], indent=2))
        return
    if not clients:
        typer.echo("no clients registered (trial-fhir clients add NAME --scope … --jwks FILE)")
    for c in clients:
        flags = [f for f, on in (("disabled", c.disabled), ("de-identified", c.deidentified)) if on]
        typer.echo(f"{c.client_id}  {c.name}  [{c.scope}]  studies: {', '.join(c.studies) or 'all'}"
                   + (f"  ({', '.join(flags)})" if flags else ""))


@app.command("disable")
def disable(client_id: str = typer.Argument(..., help="The client's id (see `clients list`)")) -> None:
    """Disable a client: no new tokens, and the tokens it holds stop working within seconds."""
    from service.auth.clients import ClientError, disable_client

    with _engine() as engine:
        try:
            client = disable_client(engine, client_id)
        except ClientError as exc:
            _fail(str(exc))
    typer.echo(f"disabled {client.name!r} ({client.client_id})")


@app.command("rotate-keys")
def rotate_keys() -> None:
    """Start signing tokens with a new key. The old one stays published at /auth/jwks (and accepted) until every
    token it signed has expired; retired keys past that are dropped."""
    from service.auth import keys
    from service.settings import get_settings

    settings = get_settings()
    with _engine() as engine:
        kid, dropped = keys.rotate(engine, settings.token_lifetime_s + settings.auth_leeway_s)
    typer.echo(f"new signing key {kid}" + (f"; dropped {len(dropped)} expired key(s)" if dropped else ""))
