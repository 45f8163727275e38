"""The docs name what the code holds: every module in the code map, every make target in the
workflow, every catalogue model and indicator where the docs list them."""

from __future__ import annotations

import re

import pytest

from training import catalogue
from training.config import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"


def _text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_the_code_map_names_every_module() -> None:
    code_map = _text("architecture.md")
    modules = sorted(
        str(path.relative_to(PROJECT_ROOT))
        for package in ("training", "serving", "feature_repo")
        for path in (PROJECT_ROOT / package).rglob("*.py")
        if path.name != "__init__.py"
    )
    assert modules and [m for m in modules if f"`{m}`" not in code_map] == []


def test_the_workflow_names_every_make_target() -> None:
    targets = re.findall(r"^([a-z][a-z-]*):.*## ", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE)
    workflow = _text("workflow.md")
    assert len(targets) > 10 and [t for t in targets if f"make {t}" not in workflow] == []


@pytest.mark.parametrize("model", catalogue.MODELS, ids=lambda m: m.name)
def test_the_evaluation_table_has_a_row_per_catalogue_model(model) -> None:
    table = _text("evaluation.md").split("\n\n")[1]  # the table under the title
    [row] = [line for line in table.splitlines() if f"`{model.name}`" in line.split("|")[1]]
    shown = [i.name for i in model.indicators if i.stored and not i.name.startswith("p_purchase_")
             and not i.name.endswith(("_p10", "_p90"))]  # written p_purchase_{7,30,90}d, "with P10/P90"
    assert [name for name in shown if name not in row] == []


def test_the_service_docs_show_every_stored_indicator() -> None:
    service = _text("service.md")
    assert [name for name in catalogue.STORED_INDICATORS if f'"{name}"' not in service] == []
