"""The training report: one self-contained HTML page per run, on disk and in MLflow, that a
real browser renders with its plots (headless Chromium, driven by Playwright)."""

from __future__ import annotations

import io
import os
import shutil

import mlflow
import pytest

from training import tracking
from training.report import REPORTS_EXPERIMENT, latest_report

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
