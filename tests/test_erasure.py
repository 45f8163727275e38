"""Erasure with suppression: no trace of an erased customer in any file or store, and a
re-import of the original export brings none of their rows back."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from training.config import Config, Paths
from training.data.ingest import ImportOptions, IngestError, ingest
from training.data.suppression import Suppression, SuppressionKeyError
from training.erasure import erase, find_traces, roots_of


def test_the_suppression_list_holds_keyed_hashes_only(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    suppression = Suppression(paths)
    [digest] = suppression.add(["C00000042"])
    stored = paths.suppression.read_text()
    assert "C00000042" not in stored and digest in stored
    assert (paths.access / "suppression.key").stat().st_mode & 0o777 == 0o600
    assert suppression.contains(pd.Series(["C00000042", "C00000043", None])).tolist() == [True, False, False]
    assert Suppression(paths).contains(pd.Series(["C00000042"])).tolist() == [True]  # a later process
    assert Suppression(paths, secret="another key").hash_of("C00000042") != digest  # keyed: not a plain hash


def test_a_suppression_list_without_its_key_refuses_to_be_used(tmp_path: Path) -> None:
    """Restored without its key, the list would match nobody and let erased customers back in."""
    paths = Paths(tmp_path / "data")
    Suppression(paths).add(["C00000042"])
    (paths.access / "suppression.key").unlink()
    with pytest.raises(SuppressionKeyError, match="Restore the key"):
        Suppression(paths).contains(pd.Series(["C00000042"]))
    with pytest.raises(SuppressionKeyError):
        Suppression(paths, secret="a different key").contains(pd.Series(["C00000042"]))
    export = tmp_path / "orders.csv"
    pd.DataFrame({"customer_id": ["C00000042"], "timestamp": ["2024-01-02"], "amount": [1.0]}).to_csv(export, index=False)
    with pytest.raises(IngestError, match="suppression key"):
        ingest(paths, {"transactions": export}, ImportOptions())


def test_numeric_ids_erase_only_that_customers_rows_and_keep_each_files_format(tmp_path: Path) -> None:
    """Erasing 17850 leaves 13047's order 17850 of product 17850 alone, keeps a ';' file's
    delimiter, and does not touch a file without a customer-id column."""
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "quarantine").mkdir()
    pd.DataFrame({
        "customer_id": ["17850", "13047", "12583"], "order_id": ["1", "17850", "2"],
        "product_id": ["A", "17850", "B"], "category": ["x", "y", "Pack-17850"], "amount": [5.0, 17850.0, 3.5],
    }).to_parquet(data / "raw" / "transactions.parquet")
    semicolons = data / "quarantine" / "transactions-1.csv"
    semicolons.write_text("customer_id;timestamp;amount;reason\n 17850.0;2101-01-01;12,5;future timestamp\n13047;2101-01-01;17850,0;future timestamp\n")
    one_column = data / "ids.csv"
    one_column.write_text("id\nC1\nC2\n")
    latin = data / "quarantine" / "customers-2.csv"
    latin.write_bytes("customer_id,name\n17850,Ren\xe9e\n99,Zo\xe9\n".encode("latin-1"))
    config = Config(data_dir=data, mlflow_dir=tmp_path / "mlflow")
    report = erase(config, ["17850"])
    assert report.complete and report.not_found == []
    kept = pd.read_parquet(data / "raw" / "transactions.parquet")
    assert kept["customer_id"].tolist() == ["13047", "12583"]
    assert semicolons.read_text() == "customer_id;timestamp;amount;reason\n13047;2101-01-01;17850,0;future timestamp\n"
    assert one_column.read_text() == "id\nC1\nC2\n"
    assert latin.read_bytes() == "customer_id,name\n99,Zo\xe9\n".encode("latin-1")
    definite = [t for t in report.traces if t.definite]
    assert definite == [] and any("other columns" in t.location for t in report.traces)  # 13047's order 17850: checked by hand
    again = erase(config, ["nobody"])
    assert again.not_found == ["nobody"] and again.complete


def test_an_ids_file_may_carry_a_bom_a_header_and_other_columns(tmp_path: Path) -> None:
    from training.erasure import read_ids_file

    path = tmp_path / "ids.csv"
    path.write_bytes("\ufeffcustomer_id;reason\nC1;request\n C2 ;request\n".encode("utf-8"))
    assert read_ids_file(path) == ["C1", "C2"]


def test_an_import_drops_suppressed_customers_before_quarantine(tmp_path: Path) -> None:
    export = tmp_path / "orders.csv"
    pd.DataFrame({
        "Client": [" 17850.0", "17850.0", "13047.0", "13047.0"],
        "When": ["2024-01-02", "not a date", "2024-01-03", "2024-02-01"],
        "Total": [10.0, 5.0, 20.0, 7.5],
    }).to_csv(export, index=False)
    paths = Paths(tmp_path / "data")
    Suppression(paths).add(["17850"])  # ids as the import reads them (float-formatted integers)
    options = ImportOptions(columns={"customer_id": "Client", "timestamp": "When", "amount": "Total"})
    [report] = ingest(paths, {"transactions": export}, options)
    assert (report.rows_read, report.rows_suppressed, report.rows_added, report.rows_quarantined) == (4, 2, 2, 0)
    assert set(pd.read_parquet(paths.raw_table("transactions"))["customer_id"]) == {"13047"}
    assert not paths.quarantine.exists()  # the erased customer's bad row is not kept either


@pytest.fixture(scope="module")
def erased_world(trained, tmp_path_factory):
    """A copy of the trained world (MLflow store inside it), a quarantined row added for one
    customer, then that customer erased."""
    from serving.batch import score_all
    from training.features import store as feature_store

    config, _ = trained
    root = tmp_path_factory.mktemp("erased") / "data"
    shutil.copytree(config.data_dir, root)  # links followed: the generated truth is copied, not shared
    exports = tmp_path_factory.mktemp("original-exports")
    for table in ("transactions", "events", "customers"):
        shutil.copy(root / "export" / f"{table}.csv", exports / f"{table}.csv")
    copied = replace(config, data_dir=root, mlflow_dir=root / "mlflow")
    score_all(copied)  # predictions/ and the prediction view online
    profile = pd.read_parquet(copied.paths.features / "customer_profile.parquet")
    events = pd.read_parquet(copied.paths.raw_table("events"))
    victim = str(profile.loc[profile["customer_id"].isin(events["customer_id"]), "customer_id"].iloc[3])
    late = exports.parent / "late.csv"
    pd.DataFrame({"customer_id": [victim], "timestamp": ["2101-01-01"], "amount": [5.0]}).to_csv(late, index=False)
    [late_report] = ingest(copied.paths, {"transactions": late}, ImportOptions(as_of=pd.Timestamp("2100-01-01")))
    assert late_report.rows_quarantined == 1
    store = feature_store.feature_store(copied)
    before = find_traces(roots_of(copied), [victim], None)
    report = erase(copied, [victim])
    return copied, victim, exports, before, report, store


def test_erasure_leaves_no_trace_in_any_file_or_the_online_store(erased_world) -> None:
    config, victim, _, before, report, store = erased_world
    found_before = {Path(t.location).relative_to(config.data_dir).parts[0] for t in before}
    assert {"raw", "quarantine", "features", "feast", "predictions", "truth"} <= found_before  # the scan sees every store
    assert report.complete, report.traces
    assert report.online_rows_deleted >= 3
    assert find_traces(roots_of(config), [victim], None) == []
    assert store.get_online_features(["customer_profile:signup_at"], [{"customer_id": victim}]).to_dict()["signup_at"] == [None]
    started, done = [json.loads(line) for line in (config.paths.access / "erasure_audit.jsonl").read_text().splitlines()]
    assert (started["event"], done["event"]) == ("erasure started", "erasure done")
    assert done["customer_id_hashes"] == [Suppression(config.paths).hash_of(victim)] and done["traces_after"] == []


def test_no_registered_model_or_artifact_holds_a_customer_id(erased_world) -> None:
    """Input examples are no customer's rows and lookalike models keep no seed ids, so the
    MLflow store has nothing an erasure would have to rewrite."""
    config, *_ = erased_world
    ids = pd.read_parquet(config.paths.features / "customer_profile.parquet")["customer_id"].tolist()
    assert find_traces([config.mlflow_store], ids, None) == []


def test_the_endpoint_no_longer_knows_an_erased_customer(erased_world, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.service import CustomerIndicators

    config, victim, *_ = erased_world
    monkeypatch.setenv("INDICATORS_DATA_DIR", str(config.data_dir))
    monkeypatch.setenv("INDICATORS_MLFLOW_DIR", str(config.mlflow_store))
    service = CustomerIndicators.inner()
    answer = service.profile(customer_ids=[victim])
    assert answer["not_found"] == [victim] and answer["profiles"] == []
    assert service.explain(customer_id=victim) == {"customer_id": victim, "found": False}
    assert victim not in set(service._latest_features()["customer_id"])


def test_re_importing_the_original_export_drops_the_erased_customer(erased_world) -> None:
    from tests.conftest import EXPORT_COLUMNS

    config, victim, exports, *_ = erased_world
    sources = {table: exports / f"{table}.csv" for table in ("transactions", "events", "customers")}
    reports = ingest(config.paths, sources, ImportOptions(columns=EXPORT_COLUMNS, as_of=pd.Timestamp("2100-01-01")))
    assert all(r.rows_suppressed > 0 for r in reports), [(r.table, r.rows_suppressed) for r in reports]
    assert all(r.rows_added == 0 for r in reports)  # everyone else was there already
    assert find_traces(roots_of(config), [victim], None) == []
