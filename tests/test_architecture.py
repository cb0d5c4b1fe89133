"""The layering of the code base (docs/DESIGN.md, "Layout"): the model on the ground floor, the
exporter independent of the generation engine, training code in small functions."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_TOP_LEVEL = sorted({p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir()
                                                                  if (p / "__init__.py").exists()})


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, at any depth (function-local imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_project_top_level_names_are_found():
    # the scan below would pass vacuously if it did not know the project's own modules
    assert {"models", "training", "data_io", "dataset_new", "evaluation", "conversion",
            "simple_inference_engine", "pretrain"} <= set(PROJECT_TOP_LEVEL)


def test_importing_the_model_loads_no_project_module_outside_models():
    code = ("import sys, models.model\n"
            f"project = set({PROJECT_TOP_LEVEL!r})\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & project))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['models']"


@pytest.mark.parametrize("package, forbidden", [
    ("models", {"training", "data_io", "dataset_new", "multipack_sampler", "evaluation", "conversion",
                "simple_inference_engine", "pretrain"}),
    ("conversion", {"simple_inference_engine", "evaluation", "pretrain"}),
])
def test_package_never_imports(package, forbidden):
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    offenders = {f.name: sorted(imported_modules(f) & forbidden) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("path", [ROOT / "pretrain.py", *sorted((ROOT / "training").glob("*.py"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_training_code_is_small_functions_without_nonlocal(path):
    assert "nonlocal" not in path.read_text()
    assert {name: n for name, n in function_lengths(path) if n > 80} == {}
