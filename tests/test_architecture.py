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


BENCH = ROOT / "bench"
BENCH_SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")


def test_bench_holds_only_the_scripts_its_readme_describes():
    assert {"multipack_bench.py", "train_throughput.py", "attention_check.py"} <= set(BENCH_SCRIPTS)
    others = sorted(p.name for p in BENCH.iterdir() if p.name != "__pycache__" and p.suffix != ".py")
    assert others == ["README.md"]  # no dated logs or raw results: git history keeps those
    sections = {line[3:].strip() for line in (BENCH / "README.md").read_text().splitlines() if line.startswith("## ")}
    assert sections == set(BENCH_SCRIPTS) | {"common.py"}


@pytest.mark.parametrize("script", BENCH_SCRIPTS)
def test_bench_script_help_runs_on_cpu(script):
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:")


def test_no_section_numbers_or_results_log_cited_outside_docs():
    # The design is cited by section name (docs/DESIGN.md, "Model"), figures live in bench/README.md.
    banned = ("\u00a7", "RESULTS" + ".md")
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.endswith("/")}
    offenders = []
    for path in sorted([*ROOT.rglob("*.py"), *ROOT.rglob("*.yaml")]):
        parts = path.relative_to(ROOT).parts
        if parts[0] == "docs" or any(p.startswith(".") or p in ignored for p in parts[:-1]):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(b in line for b in banned):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []
