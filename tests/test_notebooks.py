"""Every notebook is stored without outputs and runs top to bottom on the trained fixture."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from training.config import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


def test_there_is_a_notebook_per_story() -> None:
    assert len(NOTEBOOKS) == 5, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs (nbstripout)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_small_data(path: Path, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = trained
    monkeypatch.setenv("INDICATORS_DATA_DIR", str(config.data_dir))
    monkeypatch.setenv("INDICATORS_MLFLOW_DIR", str(config.mlflow_store))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    drawing = [c for c in notebook.cells if c.cell_type == "code" and any(p in c.source for p in (".plot", "plt.", "shap.plots"))]
    assert drawing, f"{path.name} draws no plot"
    for cell in drawing:  # every cell that draws shows its figure
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"{path.name}: no figure from\n{cell.source}"
    noise = [o["text"] for c in notebook.cells if c.cell_type == "code" for o in c.outputs
             if o.output_type == "stream" and o.name == "stderr"]
    assert not noise, f"{path.name} prints warnings: {noise}"
