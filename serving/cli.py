"""The ``indicators`` command line: the commands of data, features and models
(``training/cli.py``) and, here, the ones that use the champions: score, backtest (train,
then score), serve, stream and the endpoint's API keys. Each imports what it runs when it runs, so every command starts fast."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from training.cli import (
    ConfigFile,
    DataDir,
    MlflowDir,
    Overrides,
    Seed,
    Trials,
    app,
    console,
    fail,
    load_config,
)
from training.config import DEFAULT_EXPERIMENT, ConfigError, ScoringSettings, as_utc


@app.command()
def score(
    data_dir: DataDir = None,
    mlflow_dir: MlflowDir = None,
    unknown_consent: Annotated[
        str | None,
        typer.Option(
            envvar="INDICATORS_UNKNOWN_CONSENT", show_default="score",
            help="Customers with no consent record: 'score' or 'skip' (a recorded refusal is never scored).",
        ),
    ] = None,
) -> None:
    """Score every consenting customer with the champions; write Parquet and the online store."""
    from serving.batch import NothingToScore, score_all
    from serving.scoring import ChampionMissing

    began = time.perf_counter()
    try:
        config = load_config(data_dir, mlflow_dir)
        if unknown_consent is not None:
            config = replace(config, scoring=ScoringSettings(unknown_consent=unknown_consent))
        summary = score_all(config)
    except (ChampionMissing, FileNotFoundError, NothingToScore, ConfigError) as error:
        fail(str(error))
    console.print(
        f"{summary.scored:,} customers scored as of {summary.scored_at:%Y-%m-%d} "
        f"({summary.skipped_without_consent:,} not scored for consent; {summary.without_consent_record:,} had no "
        f"consent record, {'scored' if config.scoring.unknown_consent == 'score' else 'not scored'} by policy) "
        f"in {time.perf_counter() - began:.1f}s -> {summary.parquet} and the online store "
        f"(stages: {', '.join(f'{k} {v:.1f}s' for k, v in summary.seconds.items())})"
    )


@app.command()
def backtest(
    transactions: Annotated[Path, typer.Option(help="Transaction log (.csv, .parquet or .xlsx), mapped with --column.")],
    cutoff: Annotated[
        datetime,
        typer.Option(formats=["%Y-%m-%d"], help="Only rows at or before this moment are used (00:00 UTC of the date)."),
    ],
    horizon_days: Annotated[int, typer.Option(min=1, help="Horizon N of every indicator: p_churn is no purchase in (cutoff, cutoff + N].")],
    out: Annotated[Path, typer.Option(help="Output CSV, one row per customer seen before the cutoff.")],
    column: Annotated[
        list[str], typer.Option("--column", help="Map a canonical column to the file's name, CANONICAL=NAME (repeatable).")
    ] = [],  # noqa: B006 - typer needs a literal default
    date_format: Annotated[str | None, typer.Option(help="strftime format of dates (default: inferred).")] = None,
    config_file: ConfigFile = DEFAULT_EXPERIMENT,
    overrides: Overrides = None,
    trials: Trials = None,
    seed: Seed = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the backtest's data directory (import, features, MLflow runs, report) here; it must "
                          "hold no data yet (default: a temporary directory, removed afterwards)."),
    ] = None,
) -> None:
    """Train on the log up to the cutoff as `indicators train` does, then score everyone as `indicators score` does."""
    import contextlib
    import tempfile

    from serving.backtest import (
        OUTPUT_COLUMNS,
        BacktestError,
        backtest_config,
        read_log,
        run_backtest,
    )
    from serving.batch import NothingToScore
    from serving.scoring import ChampionMissing
    from training.cli import parse_mapping, print_training_summary, quiet_mlflow, training_config
    from training.config import Config
    from training.data.ingest import ImportOptions, IngestError
    from training.windows import HistoryTooShort

    quiet_mlflow()
    began = time.perf_counter()
    try:
        log, bad_rows = read_log(transactions, cutoff, ImportOptions(columns=parse_mapping(column), date_format=date_format))
    except IngestError as error:
        fail(str(error))
    if bad_rows:
        console.print(f"{bad_rows:,} unusable rows were skipped (see `indicators ingest` for the reasons)")
    with contextlib.ExitStack() as stack:
        work = work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="indicators-backtest-")))
        keep = work_dir is not None  # plots and the HTML report only where someone can open them
        config = backtest_config(training_config(Config(), config_file, None, trials, seed, overrides), work, horizon_days, keep)
        try:
            result = run_backtest(log, cutoff, config, lambda message: console.print(f"[dim]{time.perf_counter() - began:6.1f}s[/] {message}"),
                                  report=keep)
        except HistoryTooShort as error:
            fail(f"{error}. For a backtest: a later cutoff, or a shorter --horizon-days (it sets every horizon)")
        except (BacktestError, ChampionMissing, FileNotFoundError, IngestError, NothingToScore) as error:
            fail(str(error))
        print_training_summary(result.training, began)
    predictions = result.predictions
    out.parent.mkdir(parents=True, exist_ok=True)
    predictions[OUTPUT_COLUMNS].to_csv(out, index=False)
    if result.scored_as_of < as_utc(cutoff) - timedelta(days=1):
        console.print(f"[yellow]warning:[/] the last transaction ({log['timestamp'].max():%Y-%m-%d}) is well before the "
                      f"cutoff ({cutoff:%Y-%m-%d}): predictions are as of {result.scored_as_of:%Y-%m-%d}, the end of the data")
    kept = f"; data, MLflow runs and report kept in {work_dir}" if work_dir else ""
    console.print(f"{len(predictions):,} customers -> {out} in {time.perf_counter() - began:.1f}s, "
                  f"as of {result.scored_as_of:%Y-%m-%d}{kept}")


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for a container).")] = "127.0.0.1",
    workers: Annotated[
        int | None,
        typer.Option(min=0, envvar="INDICATORS_WORKERS", show_default="one per core", help="Worker processes (0: one per core)."),
    ] = None,
    data_dir: DataDir = None,
    mlflow_dir: MlflowDir = None,
) -> None:
    """Serve the endpoint (`bentoml serve`) for this data directory and registry (what `make serve` runs)."""
    import os

    from serving.access import AccessError, check_extra_key
    from serving.server import server_environment
    from training.config import PROJECT_ROOT

    try:
        check_extra_key(os.environ.get("INDICATORS_API_KEY"))
    except AccessError as error:
        fail(str(error))
    config = load_config(data_dir, mlflow_dir, workers=workers)
    env = {**os.environ, **server_environment(config), "INDICATORS_DATA_DIR": str(config.data_dir),
           "INDICATORS_MLFLOW_DIR": str(config.mlflow_store)}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    command = [bentoml, "serve", "serving.service:CustomerIndicators", "--working-dir", str(PROJECT_ROOT),
               "--host", host, "--port", str(port)]
    console.print(f"serving {config.data_dir} with {config.server_workers} worker(s) on http://{host}:{port}")
    os.execve(bentoml, command, env)


@app.command()
def stream(
    amqp: Annotated[str, typer.Option("--amqp", help="RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2F.")],
    queue: Annotated[str, typer.Option("--queue", help="The queue of event batches (declared durable if absent).")],
    idle_exit: Annotated[float | None, typer.Option(help="Stop once the queue has been empty this many seconds "
                                                         "(default: run until interrupted).")] = None,
    data_dir: DataDir = None,
    mlflow_dir: MlflowDir = None,
) -> None:
    """Consume events from RabbitMQ as POST /events takes them; acknowledge each message once
    its events are durable and online; poison messages go to QUEUE.dead-letter with the reason."""
    import pika.exceptions

    from serving.stream import consume, dead_letter_queue

    config = load_config(data_dir, mlflow_dir)
    console.print(f"consuming {queue} (poison messages to {dead_letter_queue(queue)}); Ctrl-C stops")
    try:
        stats = consume(config, amqp, queue, idle_seconds=idle_exit)
    except pika.exceptions.AMQPError as error:
        fail(f"RabbitMQ at {amqp.split('@')[-1]}: {type(error).__name__} {error}")
    console.print(
        f"{stats.messages:,} message(s): {stats.events_accepted:,} events accepted, {stats.duplicates:,} repeats, "
        f"{stats.suppressed:,} of erased customers dropped, {stats.dead_lettered:,} dead-lettered, {stats.retried:,} retried"
    )


api_key_app = typer.Typer(help="API keys of the endpoint: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


def _key_store(data_dir: Path | None):
    from serving.access import KeyStore

    return KeyStore(load_config(data_dir).paths.api_keys)


@api_key_app.command("create")
def api_key_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for (shown by `list`).")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="profiles:read (default), events:write or admin; repeat for several."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from serving.access import AccessError

    try:
        key, record = _key_store(data_dir).create(name, scope or ["profiles:read"])
    except AccessError as error:
        fail(str(error))
    typer.echo(key)
    console.print(f"[dim]key {record.key_id} ({name}, scopes {', '.join(record.scopes)}): shown once, store it now[/]")


@api_key_app.command("list")
def api_key_list(data_dir: DataDir = None) -> None:
    """Every key's id, name, scopes and dates (never the key)."""
    keys = _key_store(data_dir).keys().values()
    table = Table("id", "name", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(key.key_id, key.name, ", ".join(key.scopes), key.created_at, key.revoked_at or "")
    Console(width=150).print(table) if keys else console.print("no API keys: `indicators api-key create --name NAME`")


@api_key_app.command("revoke")
def api_key_revoke(key_id: Annotated[str, typer.Argument(help="The id `list` shows.")], data_dir: DataDir = None) -> None:
    """Revoke a key: the next request with it gets 401 (running servers included)."""
    from serving.access import AccessError

    try:
        record = _key_store(data_dir).revoke(key_id)
    except AccessError as error:
        fail(str(error))
    console.print(f"key {record.key_id} ({record.name}) revoked at {record.revoked_at}")


@api_key_app.command("local")
def api_key_local(port: Annotated[int, typer.Option(help="The port `make serve` listens on.")] = 3000, data_dir: DataDir = None) -> None:
    """What `make serve` runs: create the key named 'local' on first use and print a curl line with it."""
    store = _key_store(data_dir)
    existing = [k for k in store.keys().values() if k.name == "local" and k.active]
    if existing:
        console.print(
            f"[dim]local API key {existing[0].key_id} exists (created {existing[0].created_at}; shown only then). "
            "A new one: `indicators api-key create --name NAME`[/]"
        )
        return
    key, record = store.create("local", ["profiles:read"])
    console.print(f"local API key {record.key_id} (profiles:read) created; it is shown once, in this curl line:")
    typer.echo(
        f"curl -s -X POST http://127.0.0.1:{port}/profile -H 'Authorization: Bearer {key}' "
        """-H 'Content-Type: application/json' -d '{"customer_ids": ["C00000001"]}'"""
    )


if __name__ == "__main__":
    app()
