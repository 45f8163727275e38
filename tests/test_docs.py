"""The docs name what the code holds: every module in the code map, every make target in the
workflow, every catalogue model and indicator where the docs list them; and the code keeps
the code map's rule that nothing imports a later layer."""

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


def _imports(path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


# The layers after features, by module (docs/architecture.md): a package may not import them.
MODELLING = tuple(f"training.{m}" for m in (
    "labels", "dataset", "windows", "boosting", "tuning", "models", "btyd", "baselines", "structural", "carry",
    "classical", "evaluation", "explain", "trainers",
))
TRACKING = ("training.tracking", "training.publish", "training.pipeline", "training.report", "training.cli")
LATER = {
    "training/data": ("training.features", "training.erasure", *MODELLING, *TRACKING, "serving"),
    "training/features": ("training.erasure", *MODELLING, *TRACKING, "serving"),
    "feature_repo": ("training.features", "training.erasure", *MODELLING, *TRACKING, "serving"),
    "training": ("serving",),
}


@pytest.mark.parametrize("package", sorted(LATER))
def test_nothing_imports_a_later_layer(package: str) -> None:
    offending = {
        str(path.relative_to(PROJECT_ROOT)): sorted(
            m for m in _imports(path) if any(m == later or m.startswith(f"{later}.") for later in LATER[package])
        )
        for path in (PROJECT_ROOT / package).rglob("*.py")
    }
    assert {path: found for path, found in offending.items() if found} == {}
