"""A registered model loads in a fresh environment that installs this project's wheel: its
requirements name the project, and nothing of the repository is on that environment's path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from training import tracking
from training.config import PROJECT_ROOT

UV = Path(shutil.which("uv") or PROJECT_ROOT / ".tools" / "bin" / "uv")
MODEL = "expected_purchases"

LOAD = """
import json, sys
import mlflow, pandas as pd
import training
assert "site-packages" in training.__file__, training.__file__  # the wheel, not the repository
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
rows = pd.read_parquet(sys.argv[3])
print(json.dumps(model.predict(rows).to_dict(orient="list")))
"""


def _run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.mark.skipif(not UV.exists(), reason="uv is installed by `make setup`")
def test_a_registered_model_loads_from_the_wheel_in_a_fresh_environment(trained, tmp_path) -> None:
    config, _ = trained
    client = tracking.setup_tracking(config)
    version = client.get_model_version_by_alias(MODEL, tracking.CHAMPION)
    uri = f"models:/{MODEL}/{version.version}"
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split()
    assert set(tracking.pip_requirements()) <= set(requirements)
    assert any(r.startswith(f"{tracking.DISTRIBUTION}==") for r in requirements)

    _run(UV, "build", "--wheel", "--quiet", "--out-dir", tmp_path / "dist", PROJECT_ROOT)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    _run(UV, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--quiet",
         "-o", tmp_path / "pins.txt", cwd=PROJECT_ROOT)  # the locked versions, from uv's cache
    venv = tmp_path / "fresh"
    _run(UV, "venv", "--quiet", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    _run(UV, "pip", "install", "--quiet", "--python", python, "-c", tmp_path / "pins.txt", wheel)

    model = mlflow.pyfunc.load_model(uri)  # here, from the repository
    rows = pd.DataFrame(model.input_example)
    expected = model.predict(rows)
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = _run(python, "-c", LOAD, mlflow.get_tracking_uri(), uri, tmp_path / "rows.parquet", cwd=tmp_path, env=env)
    loaded = pd.DataFrame(json.loads(out.stdout.strip().splitlines()[-1]))
    assert list(loaded.columns) == list(expected.columns) and len(loaded) == len(expected) > 0
    pd.testing.assert_frame_equal(loaded, expected.reset_index(drop=True), check_dtype=False, rtol=1e-12)
