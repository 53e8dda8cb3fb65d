"""`trial-fhir mllp`: the HL7 v2 MLLP listener as its own process."""

import asyncio
import contextlib
import signal
import sys

import typer

app = typer.Typer(help="HL7 v2 over MLLP: run a listener (its own process).", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def mllp(host: str = typer.Option(None, help="Interface to bind (default: TRIAL_FHIR_MLLP_HOST, 127.0.0.1)"),
         port: int = typer.Option(..., help="TCP port to listen on"),
         quiet: bool = typer.Option(False, "--quiet", help="No line per message")) -> None:
    """Listen for HL7 v2 ORU^R01 messages framed in MLLP and store their results (the same write as POST /hl7/v2),
    answering each with its ACK. Acts as TRIAL_FHIR_MLLP_CLIENT (required with TRIAL_FHIR_AUTH=smart). Prints a
    line per message (ACK code, peer) and the totals on exit (Ctrl-C)."""
    from service.cli import anonymous_refusal
    from service.settings import get_settings

    settings = get_settings()
    host = host or settings.mllp_host
    if settings.auth == "off" and settings.mllp_client is None:
        refusal = anonymous_refusal(settings, host)
        if refusal is not None:
            typer.secho(refusal.replace("serve", "listen on"), fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
    try:
        asyncio.run(_run(settings, host, port, quiet))
    except KeyboardInterrupt:
        pass


async def _run(settings, host: str, port: int, quiet: bool) -> None:  # type: ignore[no-untyped-def]
    from service.core.interactions import Core
    from service.db import make_engine, migrate
    from service.hl7.mllp import ListenerRefused, start_listener

    engine = make_engine(settings.database_url, statement_timeout_ms=settings.statement_timeout_ms)
    if settings.migrate_on_startup:
        migrate(engine)
    core = Core(engine, settings)
    await core.start()

    def progress(code: str, peer: str) -> None:
        if not quiet:
            typer.echo(f"{code} {peer}", err=True)

    try:
        listener, bound = await start_listener(core, settings, host, port, progress)
    except ListenerRefused as refused:
        typer.secho(f"error: {refused}", fg=typer.colors.RED, err=True)
        await core.stop()
        engine.dispose()
        sys.exit(1)
    typer.echo(f"MLLP listener on {host}:{bound} (acting as {listener.caller.name}); Ctrl-C stops it", err=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await listener.stop()
    await core.stop()
    engine.dispose()
    typer.echo("messages answered: " + ", ".join(f"{k} {v}" for k, v in listener.counts.items()), err=True)
