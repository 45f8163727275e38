"""Load test on loopback, bounded in time: one-customer /profile calls alone, then mixed with
100-customer calls from other clients (``make load-test``, after ``make train``).

    python -m bench.load --seconds 600 --out bench/load_results.json

Phases: (1) ``alone``: one client posts one-customer calls; (2) ``mixed``: ``small`` clients
keep posting one-customer calls while ``large`` clients post 100-customer calls. Per kind of
call: p50/p90/p99 and errors (anything but 200). The server's memory (the resident set of
``bentoml serve`` and its workers) is sampled through the mixed phase; its growth is the last
sample against the first after a warm-up. Targets: 0 errors, one-customer p99 mixed within 3x
alone, memory growth under 10%. Clients and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil

from bench.run import machine_info
from serving.server import running_server
from training.config import config_from_env

WARMUP_SECONDS = 10.0
_RESULTS = threading.Lock()  # client threads add to shared results


def _server_processes(url: str) -> list[psutil.Process]:
    port = url.rsplit(":", 1)[1]
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and port in cmdline:
            found += [process, *process.children(recursive=True)]
    return list({process.pid: process for process in found}.values())


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _client(url: str, key: str, ids: list[str], size: int, stop: float, seed: int, out: dict) -> None:
    rng = np.random.default_rng(seed)
    timings, errors = [], 0
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        while time.monotonic() < stop:
            batch = rng.choice(ids, size=size, replace=False).tolist()
            started = time.perf_counter()
            try:
                ok = http.post("/profile", json={"customer_ids": batch}).status_code == 200
            except httpx.HTTPError:
                ok = False
            timings.append(time.perf_counter() - started)
            errors += not ok
    with _RESULTS:
        out.setdefault("timings", []).extend(timings)
        out["errors"] = out.get("errors", 0) + errors


def _summary(result: dict) -> dict:
    ms = np.asarray(result.get("timings", [])) * 1e3
    if not len(ms):
        return {"calls": 0, "errors": result.get("errors", 0)}
    return {
        "calls": int(len(ms)),
        "errors": int(result.get("errors", 0)),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)},
    }


def run_phase(url: str, key: str, ids: list[str], seconds: float, small: int, large: int, on_sample=None) -> dict:
    """``small`` one-customer and ``large`` 100-customer clients for ``seconds``."""
    stop = time.monotonic() + seconds
    results = {"one_customer": {}, "hundred_customers": {}}
    threads = [
        threading.Thread(target=_client, args=(url, key, ids, 1, stop, k, results["one_customer"]))
        for k in range(small)
    ] + [
        threading.Thread(target=_client, args=(url, key, ids, 100, stop, 100 + k, results["hundred_customers"]))
        for k in range(large)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        if on_sample is not None:
            on_sample()
        time.sleep(min(5.0, max(0.1, stop - time.monotonic())))
    for thread in threads:
        thread.join()
    return {kind: _summary(result) for kind, result in results.items() if result}


def load_test(data_dir: Path | None, seconds: float, alone_seconds: float, small: int, large: int) -> dict:
    config = config_from_env(data_dir)
    ids = pd.read_parquet(config.paths.features / "customer_profile.parquet", columns=["customer_id"])["customer_id"].tolist()
    key = secrets.token_urlsafe(32)  # this server's only key
    with running_server(config, api_key=key) as url:
        processes = _server_processes(url)
        run_phase(url, key, ids, WARMUP_SECONDS, 1, 1)  # models paged in, caches warm
        alone = run_phase(url, key, ids, alone_seconds, 1, 0)
        samples: list[tuple[float, int]] = []
        began = time.monotonic()
        mixed = run_phase(url, key, ids, seconds, small, large, lambda: samples.append((time.monotonic() - began, _rss(processes))))
    first = next((rss for at, rss in samples if at >= WARMUP_SECONDS), samples[0][1])
    last = samples[-1][1]
    ratio = mixed["one_customer"]["p99_ms"] / alone["one_customer"]["p99_ms"]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "workers": config.server_workers,
        "clients": {"one_customer": small, "hundred_customers": large},
        "seconds": {"alone": alone_seconds, "mixed": seconds},
        "alone": alone,
        "mixed": mixed,
        "one_customer_p99_mixed_over_alone": round(ratio, 2),
        "errors": sum(s["errors"] for phase in (alone, mixed) for s in phase.values()),
        "memory": {
            "first_bytes": first,
            "last_bytes": last,
            "growth": round((last - first) / first, 4) if first else None,
            "samples": [(round(at, 1), rss) for at, rss in samples],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=600.0, help="Length of the mixed phase")
    parser.add_argument("--alone-seconds", type=float, default=60.0)
    parser.add_argument("--small-clients", type=int, default=2)
    parser.add_argument("--large-clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/load_results.json"))
    args = parser.parse_args()
    result = load_test(args.data_dir, args.seconds, args.alone_seconds, args.small_clients, args.large_clients)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "memory")} | {"memory_growth": result["memory"]["growth"]}, indent=2))


if __name__ == "__main__":
    main()
