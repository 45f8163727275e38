"""Benchmarks: generation and snapshots at scale, point-in-time retrieval, online lookups.

    python -m bench.run --out bench/results.json [--sizes 100000,1000000] [--quick]

Every measured step runs in a child process of its own (``python -m bench.run --step NAME``).
The child times the call it benchmarks and reports its own peak RSS (``VmHWM``, which starts
afresh at ``exec``); the parent polls the child's RSS, stops it past a time or memory limit,
and records how many cores other processes used meanwhile. Feast and the hand-written ASOF
join run interleaved in one child, so both see the same machine. Figures and machine
information go to one JSON file, rewritten after every section so an interrupted run keeps
what it measured; a short summary is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3

# Our targets (each judged in ``targets``).
TARGET_SCALE_CUSTOMERS = 1_000_000
TARGET_SCALE_SECONDS = 600.0
TARGET_PEAK_BYTES = 8 * GIB
TARGET_RETRIEVAL_RATIO = 1.5
TARGET_ONLINE_P99_MS = 2.0

CHILD_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "BENTOML_DO_NOT_TRACK": "True",
    "DO_NOT_TRACK": "1",
    "FEAST_USAGE": "False",
}
PACKAGES = ("duckdb", "feast", "pandas", "pyarrow", "numpy", "ibis-framework")

Args = dict[str, Any]
Result = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Settings and machine information
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What to run; built once from the command line."""

    sizes: list[int] = field(default_factory=lambda: [100_000, 1_000_000])
    entity_rows: int = 1_000_000
    fallback_entity_rows: int = 200_000
    training_frame_rows: int = 100_000
    retrieval_repeats: int = 3
    online_customers: int = 20_000
    online_single_calls: int = 2_000
    online_batch_calls: int = 300
    online_batch_size: int = 100
    online_warmup_calls: int = 50
    seed: int = 42
    feast_limit_seconds: int = 600
    step_timeout_seconds: int = 3_600
    memory_limit_bytes: int = 14 * GIB
    work_dir: str | None = None
    keep: bool = False


def machine_info() -> Result:
    """CPU, memory, Python, platform and the versions of the packages that do the work."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "memory_total_bytes": _meminfo_bytes("MemTotal"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
    }


def _proc_field(path: str, key: str) -> str | None:
    """The first ``key: value`` of a /proc file, or None off Linux."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def _meminfo_bytes(key: str) -> int | None:
    value = _proc_field("/proc/meminfo", key)
    return int(value.split()[0]) * 1024 if value else None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process: ``VmHWM`` (per exec), else ``ru_maxrss``."""
    hwm = _proc_field("/proc/self/status", "VmHWM")
    if hwm:
        return int(hwm.split()[0]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# Child processes: one per measured step
# --------------------------------------------------------------------------------------------


@dataclass
class StepOutcome:
    """What a child step reported, plus what the parent observed of it."""

    name: str
    ok: bool
    result: Result
    process_seconds: float
    polled_peak_rss_bytes: int
    machine_load: Result
    failure: str | None = None

    def as_dict(self) -> Result:
        return {
            "ok": self.ok,
            **self.result,
            "process_seconds": round(self.process_seconds, 3),
            "polled_peak_rss_bytes": self.polled_peak_rss_bytes,
            "machine_load": self.machine_load,
            **({"failure": self.failure} if self.failure else {}),
        }


@dataclass(frozen=True)
class CpuSample:
    """Machine-wide busy and steal CPU seconds, and the CPU seconds of this process's reaped children."""

    busy: float
    steal: float
    children: float

    @classmethod
    def now(cls) -> CpuSample:
        import psutil

        times = psutil.cpu_times()
        busy = sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(busy, getattr(times, "steal", 0.0), usage.ru_utime + usage.ru_stime)

    def load_since(self, before: CpuSample, seconds: float) -> Result:
        """How busy the machine was besides the step: other processes' cores, and steal."""
        step_cpu = self.children - before.children
        others = max(self.busy - before.busy - step_cpu, 0.0)
        return {
            "step_cpu_seconds": round(step_cpu, 2),
            "other_processes_cores": round(others / seconds, 2) if seconds else None,
            "steal_cores": round((self.steal - before.steal) / seconds, 2) if seconds else None,
        }


def run_step(name: str, args: Args, logs: Path, timeout: float, memory_limit: int) -> StepOutcome:
    """Run one step in a fresh interpreter; stop it past ``timeout`` seconds or ``memory_limit``.

    Also records how busy the rest of the machine was meanwhile, since timings on a shared
    machine mean little without it.
    """
    import psutil

    logs.mkdir(parents=True, exist_ok=True)
    stem = f"{len(list(logs.glob('*.log'))):02d}-{name}"
    log_file, result_file = logs / f"{stem}.log", logs / f"{stem}.json"
    command = [
        sys.executable, "-m", "bench.run", "--step", name,
        "--step-args", json.dumps(args), "--result-file", str(result_file),
    ]  # fmt: skip
    env = {**os.environ, **CHILD_ENV}
    print(f"[bench] {name} {json.dumps(args)}", flush=True)
    cpu_before = CpuSample.now()
    started = time.perf_counter()
    peak, failure = 0, None
    with open(log_file, "w") as log:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            rss = _tree_rss(watched)
            peak = max(peak, rss)
            if rss > memory_limit:
                failure = (
                    f"stopped: RSS {rss / GIB:.1f} GiB above the {memory_limit / GIB:.0f} GiB limit"
                )
            elif time.perf_counter() - started > timeout:
                failure = f"stopped: no result after {timeout:.0f} s"
            if failure:
                child.kill()
                child.wait()
                break
            time.sleep(0.1)
    elapsed = time.perf_counter() - started
    load = CpuSample.now().load_since(cpu_before, elapsed)
    if failure is None and child.returncode != 0:
        failure = _exit_reason(child.returncode) + ": " + _tail(log_file)
    result = json.loads(result_file.read_text()) if failure is None else {}
    verdict = "done" if failure is None else "FAILED"
    print(
        f"[bench] {name} {verdict} in {elapsed:.1f} s (others busy: {load['other_processes_cores']} cores)",
        flush=True,
    )
    return StepOutcome(name, failure is None, result, elapsed, peak, load, failure)


def _tree_rss(process: Any) -> int:
    """RSS of a process and its descendants (0 once it has gone)."""
    import psutil

    try:
        members = [process, *process.children(recursive=True)]
        return sum(member.memory_info().rss for member in members)
    except psutil.Error:
        return 0


def _exit_reason(returncode: int) -> str:
    if returncode == -signal.SIGALRM:
        return "time limit reached (SIGALRM)"
    if returncode == -signal.SIGKILL:
        return "killed (SIGKILL, likely out of memory)"
    return f"exit code {returncode}"


def _tail(log_file: Path, chars: int = 1500) -> str:
    return log_file.read_text(errors="replace")[-chars:]


def run_child(name: str, args: Args, result_file: Path) -> int:
    """Entry point inside a child: run the step and write its result with this process's peak RSS."""
    import warnings

    warnings.simplefilter("ignore")
    result = STEPS[name](args)
    result["peak_rss_bytes"] = peak_rss_bytes()
    result_file.write_text(json.dumps(result, default=str))
    return 0


# --------------------------------------------------------------------------------------------
# Steps (run inside children; heavy imports stay here)
# --------------------------------------------------------------------------------------------


def step_generate(args: Args) -> Result:
    """Time ``generate`` for ``customers`` customers over the default two years."""
    from training.data.generate import GenerationSpec, generate

    spec = GenerationSpec(customers=args["customers"], seed=args["seed"])
    out = Path(args["data_dir"])
    started = time.perf_counter()
    summary = generate(spec, out)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "customers": summary.customers,
        "history_days": spec.days,
        "transactions": summary.transactions,
        "events": summary.events,
        "raw_bytes": _dir_bytes(out / "raw"),
    }


def step_snapshots(args: Args) -> Result:
    """Time ``build_snapshots(paths, SnapshotPlan().dates(data_end(paths)))``."""
    import pyarrow.parquet as pq

    from training.config import Paths, SnapshotPlan
    from training.features.snapshots import build_snapshots, data_end

    paths = Paths(Path(args["data_dir"]))
    started = time.perf_counter()
    end = data_end(paths)
    ended = time.perf_counter()
    dates = SnapshotPlan().dates(end)
    written = build_snapshots(paths, dates)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "data_end_seconds": round(ended - started, 3),
        "snapshot_dates": len(dates),
        "rows": {view: pq.ParquetFile(path).metadata.num_rows for view, path in written.items()},
        "features_bytes": _dir_bytes(paths.features),
    }


def step_prepare_retrieval(args: Args) -> Result:
    """Apply the Feast repo and write ``rows`` random (customer, cutoff) entity rows."""
    import duckdb
    import pandas as pd

    from training.config import Config
    from training.features.store import apply, feature_store

    config = Config(data_dir=Path(args["data_dir"]))
    started = time.perf_counter()
    apply(feature_store(config), config.paths)
    apply_seconds = time.perf_counter() - started

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    snapshots = config.paths.features / "customer_transactions.parquet"
    ids = con.sql(f"SELECT DISTINCT customer_id FROM read_parquet('{snapshots}') ORDER BY 1").df()
    dates = con.sql(f"SELECT DISTINCT snapshot_at FROM read_parquet('{snapshots}') ORDER BY 1").df()
    dates = pd.to_datetime(dates["snapshot_at"], utc=True)
    entities = entity_rows(
        ids["customer_id"].to_numpy(), dates.min(), dates.max(), args["rows"], args["seed"]
    )
    entities.to_parquet(args["entities_file"], index=False)
    return {
        "apply_seconds": round(apply_seconds, 3),
        "rows": len(entities),
        "customers_sampled_from": len(ids),
        "cutoff_range": [str(dates.min()), str(dates.max())],
        "share_on_snapshot_dates": float(entities["event_timestamp"].isin(dates).mean()),
    }


def entity_rows(customer_ids: Any, first: Any, last: Any, rows: int, seed: int) -> Any:
    """``rows`` random customers (with replacement), each with a random cutoff in [first, last]."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    customers = rng.choice(customer_ids, size=rows)
    span = int((last - first).total_seconds())
    cutoffs = first + pd.to_timedelta(rng.integers(0, span + 1, size=rows), unit="s")
    return pd.DataFrame(
        {
            "_row": np.arange(rows, dtype=np.int64),
            "customer_id": customers.astype(object),
            "event_timestamp": pd.DatetimeIndex(cutoffs).as_unit("us"),
        }
    )


def batch_feature_refs() -> list[str]:
    """``view:feature`` for every field of the three batch views (no on-demand view)."""
    from training.features.store import BATCH_VIEWS

    return [f"{view.name}:{feature.name}" for view in BATCH_VIEWS for feature in view.features]


WARMUP_ROWS = 1_000


def timed_runs(run: Callable[[Any], Any], entities: Any, repeats: int) -> tuple[Result, Any]:
    """Time ``run(entities)`` ``repeats`` times after a warm-up call on the first rows.

    The warm-up pays one-time costs (imports, registry, backend, file scans) and is reported
    apart. Returns the figures and the last result.
    """
    import statistics

    started = time.perf_counter()
    run(entities.head(WARMUP_ROWS))
    warmup = time.perf_counter() - started
    runs, out = [], None
    for _ in range(repeats):
        out = None  # let the previous result go before the next run
        started = time.perf_counter()
        out = run(entities)
        runs.append(time.perf_counter() - started)
    figures = {
        "seconds": round(statistics.median(runs), 3),
        "runs_seconds": [round(s, 3) for s in runs],
        "warmup_seconds": round(warmup, 3),
        "warmup_rows": min(WARMUP_ROWS, len(entities)),
    }
    return figures, out


def asof_sql(features_dir: Path) -> str:
    """The batch views joined to ``entities`` by hand: DuckDB ASOF joins with Feast's TTLs.

    A snapshot matches when ``snapshot_at <= cutoff`` (the latest one wins); with a TTL its
    values count only while ``snapshot_at >= cutoff - ttl``, Feast's inclusive bounds.
    """
    from training.features.store import BATCH_VIEWS

    columns = ["e._row", "e.customer_id", "e.event_timestamp"]
    joins = []
    for k, view in enumerate(BATCH_VIEWS):
        alias, ts = f"f{k}", view.batch_source.timestamp_field
        source = features_dir / Path(view.batch_source.path).name
        ttl = int(view.ttl.total_seconds()) if view.ttl else 0
        fresh = f"{alias}.{ts} >= e.event_timestamp - INTERVAL '{ttl} seconds'"
        for feature in view.features:
            value = f'{alias}."{feature.name}"'
            expr = f"CASE WHEN {fresh} THEN {value} END" if ttl else value
            columns.append(f'{expr} AS "{feature.name}"')
        joins.append(
            f"ASOF LEFT JOIN read_parquet('{source}') AS {alias} "
            f"ON e.customer_id = {alias}.customer_id AND e.event_timestamp >= {alias}.{ts}"
        )
    return "SELECT " + ",\n       ".join(columns) + "\nFROM entities AS e\n" + "\n".join(joins)


def asof_join(sql: str, entities: Any, via_arrow: bool = True) -> Any:
    """Run the ASOF join on a fresh connection and fetch it as pandas (via Arrow, or ``.df()``)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        con.register("entities", entities)
        relation = con.sql(sql)
        if not via_arrow:
            return relation.df()
        result = relation.arrow()  # a RecordBatchReader in DuckDB 2, a Table before
        table = result.read_all() if hasattr(result, "read_all") else result
        return table.to_pandas()
    finally:
        con.close()


def step_retrieval(args: Args) -> Result:
    """Feast ``get_historical_features(...).to_df()`` for the three batch views against the
    hand-written ASOF join, on the same rows, interleaved so both see the same machine.

    Each call's extra peak memory is measured by resetting ``VmHWM`` before it. A Feast call
    longer than ``limit_seconds`` ends the process (SIGALRM), and the parent falls back.
    """
    import gc
    import statistics

    import pandas as pd

    from training.config import Config
    from training.features.store import feature_store

    config = Config(data_dir=Path(args["data_dir"]))
    store = feature_store(config)
    entities = pd.read_parquet(args["entities_file"]).head(args["rows"])
    refs = batch_feature_refs()
    sql = asof_sql(config.paths.features)
    plan_seconds: list[float] = []

    def feast(rows: Any) -> Any:
        started = time.perf_counter()
        job = store.get_historical_features(entity_df=rows.copy(), features=refs)
        plan_seconds.append(time.perf_counter() - started)
        return job.to_df()

    def asof(rows: Any) -> Any:
        return asof_join(sql, rows)

    methods = {"feast": feast, "asof": asof}
    warmup = {}
    for name, method in methods.items():
        started = time.perf_counter()
        method(entities.head(WARMUP_ROWS))
        warmup[name] = round(time.perf_counter() - started, 3)
    plan_seconds.clear()
    runs: dict[str, list[float]] = {name: [] for name in methods}
    extra: dict[str, int | None] = dict.fromkeys(methods, 0)
    frames: dict[str, Any] = {}
    for _ in range(args["repeats"]):
        for name, method in methods.items():
            frames[name] = None
            gc.collect()
            baseline, resettable = current_rss_bytes(), reset_peak_rss()
            signal.alarm(args["limit_seconds"] if name == "feast" else 0)
            started = time.perf_counter()
            frames[name] = method(entities)
            runs[name].append(time.perf_counter() - started)
            signal.alarm(0)
            if resettable and extra[name] is not None:
                extra[name] = max(extra[name], peak_rss_bytes() - baseline)
            else:
                extra[name] = None
    started = time.perf_counter()
    asof_join(sql, entities, via_arrow=False)
    with_df = time.perf_counter() - started

    def figures(name: str) -> Result:
        return {
            "seconds": round(statistics.median(runs[name]), 3),
            "runs_seconds": [round(s, 3) for s in runs[name]],
            "warmup_seconds": warmup[name],
            "peak_extra_rss_bytes": extra[name],
        }

    feast_figures, asof_figures = figures("feast"), figures("asof")
    feast_figures["plan_seconds"] = [round(s, 3) for s in plan_seconds]
    asof_figures["seconds_fetching_with_df"] = round(with_df, 3)
    return {
        "rows": len(entities),
        "features": len(refs),
        "warmup_rows": WARMUP_ROWS,
        "feast": feast_figures,
        "asof": asof_figures,
        "agreement": compare_frames(frames["asof"], frames["feast"]),
    }


def current_rss_bytes() -> int:
    rss = _proc_field("/proc/self/status", "VmRSS")
    return int(rss.split()[0]) * 1024 if rss else 0


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def compare_frames(asof: Any, feast: Any) -> Result:
    """Mismatching values per feature column of two results sorted by ``_row``."""
    asof = asof.sort_values("_row").reset_index(drop=True)
    feast = feast.sort_values("_row").reset_index(drop=True)
    if len(asof) != len(feast) or not (asof["_row"].to_numpy() == feast["_row"].to_numpy()).all():
        return {"same_rows": False, "rows_asof": len(asof), "rows_feast": len(feast)}
    columns = [c for c in asof.columns if c not in {"_row", "customer_id", "event_timestamp"}]
    per_column = {c: _mismatches(asof[c], feast[c]) for c in columns if c in feast.columns}
    return {
        "same_rows": True,
        "columns_compared": len(per_column),
        "columns_missing_in_feast": sorted(set(columns) - set(feast.columns)),
        "mismatches_total": sum(per_column.values()),
        "mismatches": {c: n for c, n in per_column.items() if n},
        "non_null_share": {
            c: round(float(feast[c].notna().mean()), 4)
            for c in ("purchase_days_90d", "sessions_30d", "region")
            if c in feast.columns
        },
    }


def _mismatches(left: Any, right: Any) -> int:
    """Values that differ (both missing counts as equal; floats compared to 1e-9 relative)."""
    import numpy as np
    import pandas as pd
    from pandas.api import types

    left_na, right_na = left.isna().to_numpy(), right.isna().to_numpy()
    if types.is_datetime64_any_dtype(left) or types.is_datetime64_any_dtype(right):
        a = pd.to_datetime(left, utc=True).dt.as_unit("us")
        b = pd.to_datetime(right, utc=True).dt.as_unit("us")
        equal = (a == b).to_numpy()
    elif types.is_numeric_dtype(left) and types.is_numeric_dtype(right):
        a = left.to_numpy(dtype=float, na_value=np.nan)
        b = right.to_numpy(dtype=float, na_value=np.nan)
        equal = np.isclose(a, b, rtol=1e-9, atol=1e-12)
    else:
        equal = left.astype(object).to_numpy() == right.astype(object).to_numpy()
    differ = ~(equal | (left_na & right_na)) | (left_na ^ right_na)
    return int(differ.sum())


def step_training_frame(args: Args) -> Result:
    """Time ``training_frame`` (the full feature service, on-demand view included)."""
    import pandas as pd

    from training.config import Config
    from training.features.store import feature_store, training_frame

    store = feature_store(Config(data_dir=Path(args["data_dir"])))
    entities = pd.read_parquet(args["entities_file"]).head(args["rows"])
    rows = pd.DataFrame(
        {"customer_id": entities["customer_id"], "cutoff": entities["event_timestamp"]}
    )
    figures, frame = timed_runs(lambda r: training_frame(store, r), rows, args["repeats"])
    refs = batch_feature_refs()
    entity_df = pd.DataFrame(
        {"customer_id": rows["customer_id"].astype(str), "event_timestamp": rows["cutoff"]}
    )
    batch, _ = timed_runs(
        lambda r: store.get_historical_features(entity_df=r.copy(), features=refs).to_df(),
        entity_df,
        args["repeats"],
    )
    return {
        **figures,
        "batch_views_only_seconds": batch["seconds"],
        "on_demand_view_seconds": round(figures["seconds"] - batch["seconds"], 3),
        "rows": len(frame),
        "columns": frame.shape[1],
        "days_since_last_purchase_non_null": round(
            float(frame["days_since_last_purchase"].notna().mean()), 4
        ),
    }


def step_online_prepare(args: Args) -> Result:
    """Generate a small data set, snapshot it, apply the repo and time ``write_latest_online``."""
    from training.config import Config, SnapshotPlan
    from training.data.generate import GenerationSpec, generate
    from training.features.snapshots import build_snapshots, data_end
    from training.features.store import apply, feature_store, write_latest_online

    config = Config(data_dir=Path(args["data_dir"]))
    paths = config.paths
    generate(GenerationSpec(customers=args["customers"], seed=args["seed"]), paths.data_dir)
    build_snapshots(paths, SnapshotPlan().dates(data_end(paths)))
    store = feature_store(config)
    apply(store, paths)
    started = time.perf_counter()
    written = write_latest_online(store, paths)
    seconds = time.perf_counter() - started
    rows = sum(written.values())
    return {
        "customers": args["customers"],
        "write_seconds": round(seconds, 3),
        "rows_written": written,
        "rows_per_second": round(rows / seconds, 1),
        "ms_per_customer": round(1e3 * seconds / args["customers"], 3),
    }


def step_online_latency(args: Args) -> Result:
    """Latency of ``get_online_features``: full service and batch views, 1 and N customers."""
    import numpy as np
    import pyarrow.parquet as pq

    from training.config import Config
    from training.features.snapshots import data_end
    from training.features.store import DEFAULT_SERVICE, REQUEST_TIME, feature_store

    config = Config(data_dir=Path(args["data_dir"]))
    store = feature_store(config)
    service = store.get_feature_service(DEFAULT_SERVICE)  # resolved once, as a server would
    refs = batch_feature_refs()
    ids = pq.read_table(config.paths.features / "customer_profile.parquet", columns=["customer_id"])
    ids = np.asarray(ids.column("customer_id").to_pylist(), dtype=object)
    as_of = data_end(config.paths)
    rng = np.random.default_rng(args["seed"])
    warmup = args["warmup_calls"]

    def batches(size: int, calls: int, with_time: bool) -> list[list[dict]]:
        picks = rng.choice(ids, size=(warmup + calls, size))
        extra = {REQUEST_TIME: as_of} if with_time else {}
        return [[{"customer_id": cid, **extra} for cid in row] for row in picks]

    def measure(features: Any, size: int, calls: int, with_time: bool) -> Result:
        return latency(lambda rows: store.get_online_features(features=features, entity_rows=rows),
                        batches(size, calls, with_time), warmup)  # fmt: skip

    n, single, batch = args["batch_size"], args["single_calls"], args["batch_calls"]
    results = {
        "service_1": measure(service, 1, single, True),
        f"service_{n}": measure(service, n, batch, True),
        "batch_views_1": measure(refs, 1, single, False),
        f"batch_views_{n}": measure(refs, n, batch, False),
    }
    probe = store.get_online_features(features=service, entity_rows=batches(n, 1, True)[0])
    started = time.perf_counter()
    values = probe.to_dict()
    to_dict_ms = 1e3 * (time.perf_counter() - started)
    return {
        "latency": results,
        "as_of": str(as_of),
        "to_dict_ms_for_batch": round(to_dict_ms, 3),
        "non_null_share": {
            name: round(sum(v is not None for v in values[name]) / len(values[name]), 3)
            for name in ("purchase_days_90d", "days_since_last_purchase", "region")
        },
    }


def latency(call: Callable[[list[dict]], Any], batches: list[list[dict]], warmup: int) -> Result:
    """Percentiles in ms of ``call`` over ``batches``, the first ``warmup`` calls discarded."""
    import numpy as np

    timings = []
    for k, rows in enumerate(batches):
        started = time.perf_counter()
        call(rows)
        if k >= warmup:
            timings.append(time.perf_counter() - started)
    ms = np.asarray(timings) * 1e3
    return {
        "calls": len(ms),
        "entities_per_call": len(batches[0]),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


STEPS: dict[str, Callable[[Args], Result]] = {
    "generate": step_generate,
    "snapshots": step_snapshots,
    "prepare_retrieval": step_prepare_retrieval,
    "retrieval": step_retrieval,
    "training_frame": step_training_frame,
    "online_prepare": step_online_prepare,
    "online_latency": step_online_latency,
}


# --------------------------------------------------------------------------------------------
# Sections (run in the parent, which stays small)
# --------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """The parent's context: settings, scratch directory and the step runner."""

    settings: Settings
    work: Path

    def step(self, name: str, args: Args, timeout: float | None = None) -> StepOutcome:
        timeout = timeout or self.settings.step_timeout_seconds
        return run_step(name, args, self.work / "logs", timeout, self.settings.memory_limit_bytes)


def bench_scale(bench: Bench, size: int) -> Result:
    """Generation and snapshots for ``size`` customers, each step in its own process.

    Only the feature snapshots are kept afterwards, for the retrieval benchmark.
    """
    data_dir = bench.work / f"customers-{size}"
    generated = bench.step(
        "generate", {"data_dir": str(data_dir), "customers": size, "seed": bench.settings.seed}
    )
    section: Result = {"customers": size, "generate": generated.as_dict()}
    if generated.ok:
        snapshots = bench.step("snapshots", {"data_dir": str(data_dir)})
        section["snapshots"] = snapshots.as_dict()
        if snapshots.ok:
            total = generated.result["seconds"] + snapshots.result["seconds"]
            peak = max(generated.result["peak_rss_bytes"], snapshots.result["peak_rss_bytes"])
            section["total_seconds"] = round(total, 3)
            section["peak_rss_bytes"] = peak
            section["meets_target"] = {
                "seconds": total < TARGET_SCALE_SECONDS,
                "peak_memory": peak < TARGET_PEAK_BYTES,
                "all": total < TARGET_SCALE_SECONDS and peak < TARGET_PEAK_BYTES,
            }
    for scratch in ("raw", "truth", ".duckdb_tmp"):
        shutil.rmtree(data_dir / scratch, ignore_errors=True)
    return section


def bench_retrieval(bench: Bench, customers: int, with_training_frame: bool) -> Result:
    """Feast point-in-time retrieval against a hand-written ASOF join, on the same entity rows."""
    settings = bench.settings
    data_dir = bench.work / f"customers-{customers}"
    folder = bench.work / f"retrieval-{customers}"
    folder.mkdir(parents=True, exist_ok=True)
    entities_file = folder / "entities.parquet"
    common = {"data_dir": str(data_dir), "entities_file": str(entities_file)}
    prepared = bench.step(
        "prepare_retrieval", {**common, "rows": settings.entity_rows, "seed": settings.seed}
    )
    section: Result = {"customers": customers, "prepare": prepared.as_dict()}
    if not prepared.ok:
        return section

    attempts: list[Result] = []
    for rows in dict.fromkeys(
        [settings.entity_rows, min(settings.fallback_entity_rows, settings.entity_rows)]
    ):
        args = {
            **common,
            "rows": rows,
            "repeats": settings.retrieval_repeats,
            "limit_seconds": settings.feast_limit_seconds,
        }
        timeout = 2 * settings.feast_limit_seconds * (settings.retrieval_repeats + 1) + 300
        compared = bench.step("retrieval", args, timeout=timeout)
        attempts.append({"rows": rows, "ok": compared.ok, "failure": compared.failure})
        if compared.ok:
            break
    section["entity_rows_requested"] = settings.entity_rows
    section["entity_rows_used"] = attempts[-1]["rows"]
    section["fallback"] = None if len(attempts) == 1 else {"attempts": attempts}
    section["comparison"] = compared.as_dict()
    if compared.ok:
        ratio = compared.result["feast"]["seconds"] / compared.result["asof"]["seconds"]
        section["ratio_feast_to_asof"] = round(ratio, 2)
        section["meets_target"] = ratio <= TARGET_RETRIEVAL_RATIO
    if not with_training_frame:
        return section
    frame_rows = min(settings.training_frame_rows, settings.entity_rows)
    section["training_frame"] = bench.step(
        "training_frame", {**common, "rows": frame_rows, "repeats": 1}
    ).as_dict()
    return section


def bench_online(bench: Bench) -> Result:
    """Online write of the latest values and lookup latency on a small separate data set."""
    settings = bench.settings
    data_dir = bench.work / "online"
    prepared = bench.step(
        "online_prepare",
        {"data_dir": str(data_dir), "customers": settings.online_customers, "seed": settings.seed},
    )
    section: Result = {"write": prepared.as_dict()}
    if prepared.ok:
        latency = bench.step(
            "online_latency",
            {
                "data_dir": str(data_dir),
                "seed": settings.seed,
                "single_calls": settings.online_single_calls,
                "batch_calls": settings.online_batch_calls,
                "batch_size": settings.online_batch_size,
                "warmup_calls": settings.online_warmup_calls,
            },
        )
        section["lookup"] = latency.as_dict()
        if latency.ok:
            p99 = latency.result["latency"]["service_1"]["p99_ms"]
            section["meets_target"] = p99 < TARGET_ONLINE_P99_MS
    shutil.rmtree(data_dir, ignore_errors=True)
    return section


def targets(report: Result) -> Result:
    """Each of our targets with its measured figure and whether it is met."""
    scale = next(
        (s for s in report.get("scale", []) if s["customers"] == TARGET_SCALE_CUSTOMERS), None
    )
    retrieval = report.get("retrieval") or {}
    lookup = ((report.get("online") or {}).get("lookup") or {}).get("latency") or {}
    return {
        "scale_1m_seconds_under_600": None if not scale or "meets_target" not in scale
        else {"value": scale["total_seconds"], "met": scale["meets_target"]["seconds"]},
        "scale_1m_peak_memory_under_8gib": None if not scale or "meets_target" not in scale
        else {"value_gib": round(scale["peak_rss_bytes"] / GIB, 2), "met": scale["meets_target"]["peak_memory"]},
        "retrieval_ratio_at_most_1_5": None if "ratio_feast_to_asof" not in retrieval
        else {"value": retrieval["ratio_feast_to_asof"], "met": retrieval["meets_target"],
              "entity_rows": retrieval["entity_rows_used"]},
        "retrieval_ratio_smaller_sizes": [
            {"customers": r["customers"], "value": r["ratio_feast_to_asof"], "met": r["meets_target"]}
            for r in report.get("retrieval_smaller_sizes", []) if "ratio_feast_to_asof" in r
        ],
        "online_p99_1_customer_under_2ms": None if "service_1" not in lookup
        else {"value_ms": lookup["service_1"]["p99_ms"], "met": lookup["service_1"]["p99_ms"] < TARGET_ONLINE_P99_MS},
    }  # fmt: skip


def run_benchmark(settings: Settings, out: Path) -> Result:
    """Every section in turn, the report saved to ``out`` after each one."""
    if settings.work_dir:
        Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=settings.work_dir))
    bench = Bench(settings, work)
    report: Result = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": False,
        "machine": machine_info(),
        "settings": asdict(settings),
        "targets_stated": {
            "scale": f"{TARGET_SCALE_CUSTOMERS:,} customers generated + snapshotted in < {TARGET_SCALE_SECONDS:.0f} s",
            "memory": f"peak RSS < {TARGET_PEAK_BYTES / GIB:.0f} GiB",
            "retrieval": f"Feast / ASOF join <= {TARGET_RETRIEVAL_RATIO}",
            "online": f"p99 < {TARGET_ONLINE_P99_MS} ms, 1 customer, full feature service",
        },
    }
    try:
        largest = max(settings.sizes)
        report["scale"] = []
        for size in sorted(settings.sizes):
            report["scale"].append(bench_scale(bench, size))
            save(report, out)
        ready = [s["customers"] for s in report["scale"] if s.get("snapshots", {}).get("ok")]
        if largest in ready:
            report["retrieval"] = bench_retrieval(bench, largest, with_training_frame=True)
        else:
            report["retrieval"] = {"skipped": "snapshots of the largest size failed"}
        save(report, out)
        report["retrieval_smaller_sizes"] = [
            bench_retrieval(bench, size, with_training_frame=False)
            for size in ready
            if size != largest
        ]
        save(report, out)
        report["online"] = bench_online(bench)
        report["targets"] = targets(report)
        report["complete"] = True
        report["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        save(report, out)
    finally:
        if settings.keep:
            print(f"[bench] scratch data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report


def save(report: Result, out: Path) -> None:
    """Write the report atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    partial.replace(out)


# --------------------------------------------------------------------------------------------
# Summary and command line
# --------------------------------------------------------------------------------------------


def summary(report: Result) -> str:
    """A few lines a person can read."""
    lines = [f"machine: {report['machine']['cpu_count']} CPU {report['machine']['cpu_model']}, "
             f"{(report['machine']['memory_total_bytes'] or 0) / GIB:.0f} GiB"]  # fmt: skip
    for scale in report.get("scale", []):
        gen, snap = scale.get("generate", {}), scale.get("snapshots", {})
        if "total_seconds" in scale:
            lines.append(
                f"scale {scale['customers']:>9,}: generate {gen['seconds']:7.1f} s ({gen['peak_rss_bytes'] / GIB:.2f} GiB)"
                f" + snapshots {snap['seconds']:7.1f} s ({snap['peak_rss_bytes'] / GIB:.2f} GiB)"
                f" = {scale['total_seconds']:7.1f} s; {gen['transactions']:,} tx, {gen['events']:,} events;"
                f" target {'met' if scale['meets_target']['all'] else 'MISSED'}"
            )
        else:
            lines.append(
                f"scale {scale['customers']:>9,}: FAILED {gen.get('failure') or snap.get('failure')}"
            )
    retrieval = report.get("retrieval") or {}
    for section in [retrieval, *report.get("retrieval_smaller_sizes", [])]:
        if section.get("comparison"):
            lines.append(_retrieval_line(section))
    if retrieval:
        frame = retrieval.get("training_frame", {})
        if frame.get("ok"):
            lines.append(
                f"training_frame (full service) {frame['rows']:,} rows: {frame['seconds']:.1f} s, "
                f"of which the on-demand view ~{frame['on_demand_view_seconds']:.1f} s"
            )
    online = report.get("online") or {}
    write = online.get("write", {})
    if write.get("ok"):
        lines.append(f"online write {write['customers']:,} customers: {write['write_seconds']:.1f} s "
                     f"({write['rows_per_second']:,.0f} rows/s)")  # fmt: skip
    for name, figures in ((online.get("lookup") or {}).get("latency") or {}).items():
        lines.append(f"online {name:<15} p50 {figures['p50_ms']:7.3f} ms  p99 {figures['p99_ms']:7.3f} ms  "
                     f"mean {figures['mean_ms']:7.3f} ms  ({figures['calls']} calls)")  # fmt: skip
    for name, target in (report.get("targets") or {}).items():
        if isinstance(target, list):
            continue
        verdict = "n/a" if target is None else ("met" if target["met"] else "MISSED")
        lines.append(f"target {name}: {verdict}")
    busy = [load["other_processes_cores"] for load in _machine_loads(report)]
    if busy:
        lines.append(f"other processes used {min(busy):.2f}-{max(busy):.2f} cores during the steps")
    return "\n".join(lines)


def _machine_loads(node: Any) -> list[Result]:
    """Every ``machine_load`` record in the report."""
    if isinstance(node, dict):
        own = [node["machine_load"]] if isinstance(node.get("machine_load"), dict) else []
        return own + [load for value in node.values() for load in _machine_loads(value)]
    if isinstance(node, list):
        return [load for value in node for load in _machine_loads(value)]
    return []


def _retrieval_line(section: Result) -> str:
    comparison = section["comparison"]
    if not comparison.get("ok"):
        return f"retrieval {section['customers']:,} customers FAILED: {comparison.get('failure')}"
    feast, asof = comparison["feast"], comparison["asof"]
    return (
        f"retrieval {section['entity_rows_used']:,} rows over {section['customers']:,} customers: "
        f"Feast {feast['seconds']:.1f} s, ASOF join {asof['seconds']:.1f} s, "
        f"ratio {section['ratio_feast_to_asof']}, "
        f"mismatches {comparison['agreement'].get('mismatches_total')}"
        + (" (fallback)" if section.get("fallback") else "")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--sizes", help="customer counts, comma separated (default 100000,1000000)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 20000 customers, 100k entity rows"
    )
    parser.add_argument(
        "--entity-rows", type=int, help="entity rows of the retrieval benchmark (default 1,000,000)"
    )
    parser.add_argument(
        "--work-dir", help="parent of the scratch directory (default: the system temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch data")
    parser.add_argument(
        "--memory-limit-gb", type=float, default=14.0, help="stop a step above this RSS"
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--step-args", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    sizes = [20_000] if args.quick else [100_000, 1_000_000]
    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    entity_rows = args.entity_rows or (100_000 if args.quick else 1_000_000)
    return Settings(
        sizes=sizes,
        entity_rows=entity_rows,
        work_dir=args.work_dir,
        keep=args.keep,
        memory_limit_bytes=int(args.memory_limit_gb * GIB),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step:
        return run_child(args.step, json.loads(args.step_args), Path(args.result_file))
    os.environ.update(CHILD_ENV)
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    report = run_benchmark(settings_from(args), out)
    print(summary(report))
    print(f"[bench] results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
