"""The ``indicators`` commands of data, features and models, one command each. The commands
that use the champions (score, backtest, serve, stream, api-key) join them in ``serving/cli.py``, the
entry point, so nothing in ``training`` imports ``serving``."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from training.config import (
    DEFAULT_EXPERIMENT,
    Config,
    ConfigError,
    SnapshotPlan,
    config_from_env,
    load_experiment,
    parse_overrides,
    with_experiment,
)

GENERATE_START = datetime(2023, 11, 1)  # `indicators generate --start`'s default

app = typer.Typer(
    help="Predictive indicators for customer profiles: data, features, models, scores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Logs and tables go to stderr; piped (make, CI) they get a width that fits the summary table.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 150)


@app.callback()
def _before_any_command() -> None:
    from training.features.feast_checks import skip_feast_type_checks

    skip_feast_type_checks()  # a command imports Feast 2.6 s faster (training.features.feast_checks)


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="INDICATORS_DATA_DIR", show_default="data/",
        help="Root of the working data (raw/, quarantine/, features/, feast/).",
    ),
]
MlflowDir = Annotated[
    Path | None,
    typer.Option(
        "--mlflow-dir", envvar="INDICATORS_MLFLOW_DIR", show_default="mlflow/ for data/, else <data-dir>/mlflow",
        help="Local MLflow store (mlflow.db, artifacts/, reports/); a data directory owns one unless given.",
    ),
]

# The experiment options of `train` and `backtest`, which train alike.
ConfigFile = Annotated[Path, typer.Option("--config", help="Experiment config (YAML): horizons, windows, budgets, seeds.")]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set models.trials=4 (repeatable).")
]
Trials = Annotated[int | None, typer.Option(min=1, help="Shortcut for --set models.trials=N.")]
Seed = Annotated[int | None, typer.Option(help="Shortcut for --set seed=N.")]


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def load_config(*args, **kwargs) -> Config:
    """``config_from_env``, its errors (a bad environment variable) as a clear message."""
    try:
        return config_from_env(*args, **kwargs)
    except ConfigError as error:
        fail(str(error))


@app.command()
def generate(
    customers: Annotated[int, typer.Option(min=1, help="Number of customers to generate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 42,
    out: Annotated[
        Path | None,
        typer.Option(envvar="INDICATORS_DATA_DIR", show_default="data/", help="Data root: writes raw/ and truth/ below it."),
    ] = None,
    start: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], show_default=f"{GENERATE_START:%Y-%m-%d}", help="First day of the history (UTC).")
    ] = GENERATE_START,
    days: Annotated[
        int, typer.Option(min=30, help="Length of the history in days (`indicators train` needs 900 for its default horizons).")
    ] = 1095,
    line_items: Annotated[
        bool, typer.Option(help="Write one row per product of an order (product_id, quantity, unit_price).")
    ] = False,
    omit: Annotated[
        list[str],
        typer.Option("--omit", help="Leave out an optional transaction column, e.g. --omit discount (repeatable)."),
    ] = [],  # noqa: B006 - typer needs a literal default
    transactions_only: Annotated[
        bool, typer.Option(help="Write only the transaction log (no customers or events table), like a shop export.")
    ] = False,
) -> None:
    """Generate synthetic customers, transactions and behaviour from a latent BTYD process."""
    from training.data.generate import GenerationSpec
    from training.data.generate import generate as run_generation

    out = load_config(out).data_dir
    spec = GenerationSpec(
        customers=customers, seed=seed, start=start.date(), days=days,
        line_items=line_items, omit_columns=tuple(omit), transactions_only=transactions_only,
    )
    began = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("generating customers", total=customers)
        try:
            summary = run_generation(spec, out, on_chunk=lambda n: progress.advance(task, n))
        except ValueError as error:
            fail(str(error))
    console.print(
        f"{summary.customers:,} customers, {summary.transactions:,} transactions, "
        f"{summary.events:,} events from {summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d} "
        f"in {time.perf_counter() - began:.1f}s -> {out / 'raw'} (latent truth: {out / 'truth'})"
    )


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            fail(f"--column expects CANONICAL=NAME, got {pair!r}")
        canonical, name = pair.split("=", 1)
        mapping[canonical.strip()] = name.strip()
    return mapping


@app.command()
def ingest(
    transactions: Annotated[
        Path | None, typer.Option(help="Transaction log or line items (.csv, .parquet or .xlsx).")
    ] = None,
    events: Annotated[Path | None, typer.Option(help="Behavioural events (.csv, .parquet or .xlsx).")] = None,
    customers: Annotated[Path | None, typer.Option(help="Customer table (.csv, .parquet or .xlsx).")] = None,
    column: Annotated[
        list[str],
        typer.Option(
            "--column",
            help="Map a canonical column to the file's name, CANONICAL=NAME (repeatable), "
            "e.g. --column customer_id=ClientID --column timestamp=OrderDate.",
        ),
    ] = [],  # noqa: B006 - typer needs a literal default
    date_format: Annotated[
        str | None, typer.Option(help="strftime format of dates, e.g. '%d/%m/%Y %H:%M' (default: inferred).")
    ] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of naive timestamps in the file.")] = "UTC",
    decimal: Annotated[
        str, typer.Option(help="Decimal mark of numbers in text files: '.', ',' or 'auto' (per column).")
    ] = "auto",
    delimiter: Annotated[
        str | None, typer.Option(help="CSV delimiter, e.g. ';', 'tab' or 'whitespace' (default: detected).")
    ] = None,
    cancelled_prefix: Annotated[
        str | None,
        typer.Option(help="Order ids starting with this are cancellations (default: 'C' + number when other "
                          "ids are numbers; '' for none)."),
    ] = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"], help="Rows after this are 'future' (default: now, UTC)."),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Import real data into the canonical tables; bad rows go to quarantine/ with a reason."""
    from training.data.ingest import ImportOptions, IngestError
    from training.data.ingest import ingest as run_ingest

    sources = {
        name: path
        for name, path in (("transactions", transactions), ("events", events), ("customers", customers))
        if path is not None
    }
    if not sources:
        fail("nothing to import: give --transactions, --events and/or --customers")
    options = ImportOptions(
        columns=parse_mapping(column),
        date_format=date_format,
        timezone=timezone,
        decimal=decimal,
        delimiter=delimiter,
        cancelled_prefix=cancelled_prefix,
        as_of=as_of,
    )
    config = load_config(data_dir)
    try:
        reports = run_ingest(config.paths, sources, options)
    except IngestError as error:
        fail(f"{error}. Nothing was written.")
    table = Table(title="import summary")
    for header in ("table", "read", "added", "already present", "quarantined", "erased (suppressed)"):
        table.add_column(header)
    for report in reports:
        table.add_row(
            report.table,
            f"{report.rows_read:,}",
            f"{report.rows_added:,}",
            f"{report.rows_already_present:,}",
            f"{report.rows_quarantined:,}",
            f"{report.rows_suppressed:,}",
        )
    console.print(table)
    for report in reports:
        for note in report.notes:
            console.print(f"{report.table}: {note}")
        if report.books is not None:
            _print_books(report.books)
        if report.quarantine_file is not None:
            console.print(f"{report.table}: {report.rows_quarantined:,} rows quarantined, by reason:")
            for why, count in report.reasons.items():
                console.print(f"  {why}: {count:,}")
            console.print(f"  -> {report.quarantine_file}", soft_wrap=True)


def _print_books(books) -> None:
    """The import in the terms of the shop's books: orders, lines, refunds, revenue to the cent."""
    console.print(
        f"transactions: {books.lines:,} lines -> {books.orders:,} orders ({books.lines_merged:,} lines merged into "
        f"their order), {books.refund_lines:,} refund lines in {books.refund_orders:,} refunds"
    )
    console.print(
        f"revenue (net of refunds): file {books.revenue_read:,.2f}"
        + (f" {books.revenue_sign_corrected:+,.2f} for {books.sign_corrected_rows:,} refunds stated as positive"
           if books.sign_corrected_rows else "")
        + f" - quarantined {books.revenue_quarantined:,.2f} = imported {books.revenue_imported:,.2f}"
        + ("" if books.balanced else " [bold red](does not balance)[/]")
    )


@app.command()
def features(
    data_dir: DataDir = None,
    months: Annotated[int, typer.Option(min=0, help="Monthly snapshots going back from the latest date.")] = 12,
    step_days: Annotated[int, typer.Option(min=1, help="Days between snapshot dates.")] = 30,
    as_of: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Latest snapshot date (default: midnight after the last event)."),
    ] = None,
    online: Annotated[bool, typer.Option(help="Write the latest values to the online store.")] = True,
) -> None:
    """Build feature snapshots (DuckDB), apply the Feast repo and write the latest values online."""
    from training.features import store as feature_store
    from training.features.snapshots import build_snapshots, data_end

    config = load_config(data_dir, snapshots=SnapshotPlan(months=months, step_days=step_days))
    paths = config.paths
    try:
        latest = as_of if as_of is not None else data_end(paths)
    except FileNotFoundError as error:
        fail(str(error))
    cutoffs = config.snapshots.dates(latest)
    began = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("feature snapshots", total=2 * len(cutoffs) + 1)
        build_snapshots(paths, cutoffs, on_step=lambda _: progress.advance(task))
    console.print(
        f"snapshots at {len(cutoffs)} dates ({cutoffs[0]:%Y-%m-%d} .. {cutoffs[-1]:%Y-%m-%d}) "
        f"in {time.perf_counter() - began:.1f}s -> {paths.features}"
    )
    store = feature_store.feature_store(config)
    feature_store.apply(store, paths)
    console.print(f"Feast repo applied (registry in {paths.feast})")
    if online:
        began = time.perf_counter()
        written = feature_store.write_latest_online(store, paths)
        console.print(
            "online store: "
            + ", ".join(f"{view} {rows:,} rows" for view, rows in written.items())
            + f" in {time.perf_counter() - began:.1f}s"
        )



@app.command()
def train(
    data_dir: DataDir = None,
    config_file: ConfigFile = DEFAULT_EXPERIMENT,
    overrides: Overrides = None,
    from_run: Annotated[
        str | None, typer.Option(help="Reuse the config logged by this MLflow run (then --set applies on top).")
    ] = None,
    trials: Trials = None,
    seed: Seed = None,
    mlflow_dir: MlflowDir = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: sqlite:///<mlflow-dir>/mlflow.db).")
    ] = None,
) -> None:
    """Train, tune, backtest and register every model; print a summary against the baselines."""
    from training.pipeline import run_training
    from training.windows import HistoryTooShort

    quiet_mlflow()
    base = load_config(data_dir, mlflow_dir, tracking_uri=tracking_uri)
    config = training_config(base, config_file, from_run, trials, seed, overrides)
    began = time.perf_counter()
    try:
        result = run_training(config, on_step=lambda message: console.print(f"[dim]{time.perf_counter() - began:6.1f}s[/] {message}"))
    except (FileNotFoundError, HistoryTooShort) as error:
        fail(str(error))
    print_training_summary(result, began)


def quiet_mlflow() -> None:
    """MLflow's INFO lines (tables created, uv files copied, input example validated) say
    nothing to act on; its warnings are kept. MLFLOW_LOGGING_LEVEL=INFO brings them back."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401 - sets its loggers' level on import, which this then overrides

    logging.getLogger("mlflow").setLevel(os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper())
    for noisy in ("alembic", "pymc"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def training_config(
    base: Config, config_file: Path, from_run: str | None, trials: int | None, seed: int | None, overrides: list[str] | None,
) -> Config:
    """``base`` with the experiment (a YAML file or a logged run's), the shortcuts and ``--set``s."""
    from training.tracking import logged_experiment

    shortcuts = [f"models.trials={trials}"] * (trials is not None) + [f"seed={seed}"] * (seed is not None)
    try:
        experiment = logged_experiment(base, from_run) if from_run else load_experiment(config_file)
        config = with_experiment(with_experiment(base, experiment), parse_overrides([*shortcuts, *(overrides or [])]))
    except ConfigError as error:
        fail(str(error))
    console.print(f"[dim]config: {f'run {from_run}' if from_run else config_file}; seed {config.seed}, "
                  f"{config.models.trials} trials per model[/]")
    return config


def print_training_summary(result, began: float) -> None:
    """The verdicts the HTML report opens with, one row each, in columns narrow enough for a
    terminal; the gate's notes; the carried horizons; the stage timings."""
    from training.report import verdicts as report_verdicts

    console.print(f"indicators train ({result.data_window[0]:%Y-%m-%d} .. {result.data_window[1]:%Y-%m-%d})")
    table = Table("indicator", "metric", "model", "best baseline", "verdict", "served", box=None, pad_edge=False)
    for v in report_verdicts(result.reports).itertuples(index=False):
        baseline = "-" if v.best_baseline == "-" else f"{v.best_baseline} {v.baseline_value:.4f}"
        table.add_row(v.indicator, f"{v.metric} ({v.better} is better)", f"{v.model_value:.4f}", baseline, v.verdict, v.served)
    console.print(table)
    for report in result.reports:
        if report.gate_note:
            console.print(f"{report.name}: {report.gate_note}")
    for name, note in dict.fromkeys((r.name, r.horizons) for r in result.reports if "carried" in r.horizons):
        console.print(f"{name}: {note} (backtested at the learned horizon only)")
    console.print(
        "stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
        + f"; total {time.perf_counter() - began:.1f}"
    )


@app.command()
def report(
    data_dir: DataDir = None,
    mlflow_dir: MlflowDir = None,
) -> None:
    """Print where the latest training report is (one HTML page per `indicators train`)."""
    from training.report import latest_report, reports_dir

    config = load_config(data_dir, mlflow_dir)
    latest = latest_report(config)
    if latest is None:
        fail(f"no report in {reports_dir(config)}: run `make train` first")
    runs = sorted(latest.parent.glob("train-*.html"))
    typer.echo(latest.resolve())
    console.print(
        f"[dim]{len(runs)} report(s) in {latest.parent}; newest {runs[-1].name if runs else '-'}; "
        f"also logged to MLflow (experiment 'training_reports', `make mlflow-ui`)[/]"
    )

@app.command()
def erase(
    customer_id: Annotated[list[str] | None, typer.Option("--customer-id", help="A customer to erase (repeatable).")] = None,
    ids: Annotated[Path | None, typer.Option("--ids", help="A file of customer ids, one per line.")] = None,
    data_dir: DataDir = None,
    mlflow_dir: MlflowDir = None,
) -> None:
    """Erase customers from every store, suppress them in later imports, verify and audit."""
    from training.erasure import ErasureError, read_ids_file
    from training.erasure import erase as run_erase

    wanted = list(customer_id or [])
    if ids is not None:
        if not ids.exists():
            fail(f"ids file not found: {ids}")
        wanted += read_ids_file(ids)
    config = load_config(data_dir, mlflow_dir)
    try:
        report = run_erase(config, wanted)
    except (ErasureError, OSError) as error:
        fail(str(error))
    rows = sum(report.rows_removed.values())
    console.print(
        f"{report.customers:,} customer(s) erased: {rows:,} rows removed from {len(report.rows_removed)} file(s), "
        f"{report.online_rows_deleted:,} online rows deleted; suppressed in later imports; audit -> {report.audit_file}"
    )
    for path, count in report.rows_removed.items():
        console.print(f"  {count:,} rows  {path}", soft_wrap=True)
    if report.not_found:
        console.print(f"[yellow]not found in any store[/] (check the ids; suppressed all the same): {', '.join(report.not_found)}",
                      soft_wrap=True)
    for trace in report.traces:
        mark = "[bold red]still found[/]" if trace.definite else "[yellow]possible trace, check by hand[/]"
        console.print(f"  {mark} {trace.occurrences:,}x in {trace.location}", soft_wrap=True)
    if not report.complete:
        fail("erasure incomplete: the places above still hold an erased id (fix them, then run erase again)")
    console.print("verified: no erased id in a customer-id column of the data directory or the MLflow store, "
                  "nor in the online store" + (" (see the possible traces above)" if report.traces else ""))
