"""`trial-fhir audit`: check the audit trail's hash chain, on the configured database (no server needed)."""

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(help="The audit trail (AuditEvents, hash-chained).", no_args_is_help=True)


@app.command("verify")
def verify(batch: int = typer.Option(1000, help="Rows fetched per round trip"),
           head: str = typer.Option(None, help="SEQ:HASH printed by an earlier verify and kept elsewhere: the chain "
                                    "must still hold it (finds a cut at the end, or a chain rewritten with fresh "
                                    "hashes)")) -> None:
    """Walk the chain, recompute every hash: exit 0 when intact, 1 naming the first broken row."""
    from service.audit import chain
    from service.db import make_engine
    from service.settings import get_settings

    console = Console(stderr=True)
    expected = None
    if head:
        seq, _, digest = head.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            console.print("[red]error:[/red] --head must be SEQ:HASH, e.g. 1234:9f86d0…")
            raise typer.Exit(2)
        expected = (int(seq), digest)
    engine = make_engine(get_settings().database_url)
    try:
        with Progress(TextColumn("audit chain"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("verify", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=max(total, 1))

            result = chain.verify(engine, progress=progress, batch=batch, head=expected)
    finally:
        engine.dispose()
    if not result.ok:
        typer.echo(str(result))
        raise typer.Exit(1)
    typer.echo(str(result))
    typer.echo(f"head: {result.head_seq}:{result.head_hash} (keep it elsewhere; check later with --head)")
