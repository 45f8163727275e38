"""The training report: one self-contained HTML page per run, on disk and in MLflow, that a
real browser renders with its plots (headless Chromium, driven by Playwright)."""

from __future__ import annotations

import io
import os
import shutil

import mlflow
import pytest

from training import tracking
from training.publish import ModelReport
from training.report import REPORTS_EXPERIMENT, latest_report, verdicts

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def test_every_run_writes_a_report_and_logs_it_to_mlflow(trained) -> None:
    config, result = trained
    assert result.report_path.exists() and latest_report(config).read_text() == result.report_path.read_text()
    page = result.report_path.read_text()
    for report in result.reports:
        assert report.name in page and report.run_id in page
    assert "btyd" in page and "oracle" in page and "Promoted to champion" in page
    assert page.count("data:image/png;base64,") >= 10  # calibration, gains, deciles, SHAP per model
    client = tracking.setup_tracking(config)
    experiment = client.get_experiment_by_name(REPORTS_EXPERIMENT)
    [run] = mlflow.search_runs([experiment.experiment_id], output_format="list")
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == [result.report_path.name]


def test_the_report_leads_with_each_indicators_verdict_against_its_best_baseline(trained) -> None:
    """First the verdicts (which way is better, the best baseline, by how much, what is served),
    then the models; the detail tables come folded."""
    config, result = trained
    page = result.report_path.read_text()
    first_table = page[page.index("<table") : page.index("</table>")]
    for column in ("better", "best baseline", "verdict", "served"):
        assert f"<th>{column}</th>" in first_table
    assert page.index("</table>") < page.index(f'id="{result.reports[0].name}"')
    assert "<details>" in page


def test_a_verdict_says_which_way_is_better_and_who_wins() -> None:
    lower = ModelReport("expected_purchases", "expected_purchases", "mae", False, 0.70, {"bg_nbd": 0.65, "rfm": 0.80}, None)
    higher = ModelReport("clv", "expected_revenue", "normalized_gini", True, 0.90, {"bg_nbd": 0.85}, None, promoted=True, version="3")
    served = ModelReport("lookalike_top_value", "lookalike_top_value_score", "heldout_seed_recall_at_5pct", True, 0.3,
                         {"activity_heuristic": 0.6}, None, served_baseline="activity_heuristic")
    table = verdicts([lower, higher, served]).set_index("model")
    assert table.loc["expected_purchases", "better"] == "lower"
    assert table.loc["expected_purchases", "verdict"] == "loses by 0.0500"
    assert table.loc["clv", "verdict"] == "beats by 0.0500" and table.loc["clv", "served"] == "new champion v3"
    assert table.loc["lookalike_top_value", "served"] == "baseline activity_heuristic"
    assert table.loc["expected_purchases", "served"] == "previous champion kept"


def _chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None)


def test_the_report_renders_in_headless_chromium(trained) -> None:
    browser_path = _chromium()
    if browser_path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no Chromium found under CI=true: .ci/run installs Debian's chromium package")
        pytest.skip("no Chromium found: install Debian's chromium package to run the browser test")
    from matplotlib.image import imread
    from playwright.sync_api import sync_playwright

    _, result = trained
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(result.report_path.as_uri(), wait_until="load")
            assert page.title().startswith("indicators train")
            sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.complete, i.naturalWidth])")
            screenshot = page.screenshot(full_page=False)
        finally:
            browser.close()
    assert problems == []
    assert len(sizes) >= 10 and all(complete and width > 100 for complete, width in sizes), sizes
    pixels = imread(io.BytesIO(screenshot))[..., :3]
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert not_white > 0.02, f"the screenshot is blank ({not_white:.1%} of pixels are not white)"
