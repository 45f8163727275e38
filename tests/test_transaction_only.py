"""A bare transaction log (customer_id, timestamp, amount: no customers or events table, no
optional column) of one year through every command: ingest, train, score, serve, backtest.

A year cannot hold a 365-day label window behind tune and test windows: train learns the
horizons the history holds and carries the longer ones (``training.carry``)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.data.generate import GenerationSpec, generate
    from training.data.schemas import OPTIONAL_COLUMNS

    generated = tmp_path_factory.mktemp("bare-generated")
    spec = GenerationSpec(customers=700, seed=11, start=date(2023, 11, 1), days=374, transactions_only=True,
                          omit_columns=tuple(OPTIONAL_COLUMNS["transactions"]))
    generate(spec, generated)
    export = generated / "log.csv"
    pd.read_parquet(generated / "raw" / "transactions.parquet").rename(
        columns={"customer_id": "client", "timestamp": "date", "amount": "total"}
    ).to_csv(export, index=False)
    data = tmp_path_factory.mktemp("bare-data")
    runner = CliRunner()
    steps = [
        ["ingest", "--transactions", str(export), "--column", "customer_id=client", "--column", "timestamp=date",
         "--column", "amount=total", "--data-dir", str(data), "--as-of", "2100-01-01"],
        ["train", "--data-dir", str(data), "--trials", "1", "--set", "models.max_rounds=120",
         "--set", "models.timeout_seconds=30"],
        ["score", "--data-dir", str(data)],
    ]
    outputs = {}
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{args[0]}: {result.output}"
        outputs[args[0]] = result.output
    return {"data": data, "export": export, **outputs}


def test_every_customer_without_a_consent_record_is_scored_by_default(bare) -> None:
    assert not (bare["data"] / "raw" / "customers.parquet").exists()
    scores = pd.read_parquet(bare["data"] / "predictions" / "scores.parquet")
    log = pd.read_parquet(bare["data"] / "raw" / "transactions.parquet")
    assert set(scores["customer_id"]) == set(log["customer_id"])
    assert scores[["p_churn", "expected_purchases", "expected_revenue"]].notna().all().all()
    assert "had no consent record, scored by policy" in bare["score"].replace("\n", " ")
    # the data directory owns its model store: nothing went to the repository's mlflow/
    assert (bare["data"] / "mlflow" / "mlflow.db").exists()


def test_a_year_of_history_learns_what_it_holds_and_carries_365(bare) -> None:
    output = " ".join(bare["train"].split())
    assert "clv: learned at 120 d, carried to 365 d by" in output
    assert "carried to [180, 365] d" in output
    scores = pd.read_parquet(bare["data"] / "predictions" / "scores.parquet")
    buyers = scores[scores["expected_purchases"] > 0.05]
    assert (scores["expected_revenue_p10"] <= scores["expected_revenue"]).all()
    assert (scores["expected_revenue"] <= scores["expected_revenue_p90"] + 1e-9).all()
    # next purchase beyond 90 days is read off the carried part of the curve, not capped at 90
    assert (buyers["next_purchase_days"] > 90).any() and (buyers["next_purchase_days"] < 90).any()


def test_a_learnt_model_that_loses_to_a_classical_one_is_never_served(bare) -> None:
    """Each champion is the classical model itself, labelled as the baseline, or a learnt model
    that does not lose to BG/NBD or Pareto/NBD on its test window, unless the classical model
    as this project fits it (what would be served) does not beat it either, as its run says."""
    from mlflow import MlflowClient

    from training.config import config_from_env

    config = config_from_env(bare["data"], environ={})
    client = MlflowClient(config.mlflow_tracking_uri)
    kinds = {}
    for name in ("purchase_timing", "expected_purchases", "clv"):
        tags = client.get_model_version_by_alias(name, "champion").tags
        kinds[name] = tags["model_kind"]
        if tags["model_kind"] == "model":
            version = client.get_model_version_by_alias(name, "champion")
            refit = client.get_run(version.run_id).data.tags.get("promotion.classical_refit", "")
            loses = any(f"loses to baseline {b} " in tags.get("loses_to_baseline", "") for b in ("btyd", "pareto_nbd"))
            assert not loses or "does not beat the learnt model" in refit, tags
        else:
            assert tags["baseline"].split(" (")[0] in ("BG/NBD", "Pareto/NBD")
    output = " ".join(bare["train"].split())
    assert ("served, v" in output) == ("baseline" in kinds.values()), output


def test_the_endpoint_serves_a_bare_log(bare) -> None:
    """`bentoml serve` as a real process (a second in-process app would clash with the other
    endpoint tests' metrics): a customer with no consent record gets a profile, and
    ``/metadata`` says which horizons were learned and which carried."""
    import httpx

    from serving.server import ServerFailed, running_server
    from tests.conftest import API_KEY, AUTH
    from training.config import config_from_env

    scores = pd.read_parquet(bare["data"] / "predictions" / "scores.parquet").set_index("customer_id")
    customer = scores.index[0]
    try:
        with running_server(config_from_env(bare["data"], environ={}), api_key=API_KEY) as url:
            response = httpx.post(f"{url}/profile", json={"customer_ids": [customer]}, headers=AUTH, timeout=60)
            metadata = httpx.get(f"{url}/metadata", headers=AUTH, timeout=60).json()
    except ServerFailed as error:
        pytest.fail(str(error))
    assert response.status_code == 200, response.text
    [profile] = response.json()["profiles"]
    assert 0 <= profile["indicators"]["p_churn"] <= 1
    assert profile["indicators"]["lookalike_sustainable_score"] is None  # no category column: no seed
    assert "carried to 365 d" in metadata["champions"]["clv"]["horizons"]
    expected_purchases = metadata["champions"]["expected_purchases"]["horizons"]
    assert "learned at 90 d" in expected_purchases and "carried" not in expected_purchases  # its 90 days fit


@pytest.mark.slow  # the same pipeline as the train above, on the same log; the CDNOW sample runs it by default
def test_backtest_runs_on_a_bare_log(bare, tmp_path: Path) -> None:
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(
        app,
        ["backtest", "--transactions", str(bare["export"]), "--column", "customer_id=client", "--column", "timestamp=date",
         "--column", "amount=total", "--cutoff", "2024-08-31", "--horizon-days", "90", "--out", str(out), "--trials", "1"],
    )
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["p_churn"].between(0, 1).all()
