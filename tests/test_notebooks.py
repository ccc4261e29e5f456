"""Static notebook hygiene (no torch) and papermill execution on the tiny profile."""

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    chain = [p for p in NOTEBOOKS if not p.name.startswith("00_")]  # 00 = the reward explorer, not a pipeline step
    assert chain and chain[0].name == "01_data.ipynb"
    numbers = [int(p.name[:2]) for p in chain]
    assert numbers == list(range(1, len(numbers) + 1)), "numbered contiguously from 01"
    assert [p.name for p in NOTEBOOKS if p.name.startswith("00_")] == ["00_explore_reward.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_thin_and_clean(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name)
    from test_notebook_strip import stored  # what git stores: a notebook run and saved in JupyterLab is fine

    nb = nbformat.reads(stored(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert not cell.get("outputs") and cell.get("execution_count") is None, "stored without outputs"
        assert not re.search(r"^\s*(def|class|async def) ", cell.source, re.M), "no def/class in notebooks"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    names = {
        t.id for node in ast.walk(ast.parse(params[0].source)) if isinstance(node, ast.Assign) for t in node.targets
    }
    explorer = {"situation", "responses", "encoder", "interactive"} if path.name.startswith("00_") else set()
    assert names == {"profile", "run_dir", "overrides"} | explorer
    md = nb.cells[0].source
    assert "colab.research.google.com/github/" in md and f"notebooks/{path.name}" in md, "Colab badge to itself"
    assert "google.colab" in code[0].source, "first code cell is the Colab-only bootstrap"


@pytest.mark.slow
def test_data_notebook_runs_on_tiny(tmp_path):
    import papermill as pm

    out = tmp_path / "01.ipynb"
    pm.execute_notebook(
        str(next(p for p in NOTEBOOKS if p.name.startswith("01_"))), str(out), parameters={"profile": "tiny", "run_dir": str(tmp_path / "run")},
        kernel_name="python3", progress_bar=False,
    )  # fmt: skip
    assert (tmp_path / "run" / "data" / "eval.parquet").exists()
    assert (tmp_path / "run" / "data" / "manifest.json").exists()


def test_notebooks_are_what_the_script_generates(tmp_path):
    """Notebooks are generated: regenerating them from scripts/make_notebooks.py changes nothing."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    work = tmp_path / "repo"
    shutil.copytree(root / "scripts", work / "scripts")
    (work / "notebooks").mkdir()
    subprocess.run([sys.executable, str(work / "scripts" / "make_notebooks.py")], check=True, capture_output=True)
    for path in NOTEBOOKS:
        stored = subprocess.run(
            [sys.executable, str(root / "scripts" / "strip_notebook.py")],
            input=path.read_text(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout  # what git stores (outputs dropped)
        assert (work / "notebooks" / path.name).read_text() == stored, f"{path.name}: run make_notebooks.py"
        assert "edit the script" in nbformat.read(path, as_version=4).cells[0].source


def test_colab_ref_resolves_in_this_repository():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    ref = re.search(r'^REF = "([^"]+)"', (root / "scripts" / "make_notebooks.py").read_text(), re.M).group(1)
    for path in NOTEBOOKS:
        text = path.read_text()
        assert f'\\"origin\\", \\"{ref}\\"' in text and f"/blob/{ref}/notebooks/{path.name}" in text
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=root, capture_output=True, text=True)
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=root, capture_output=True, text=True
    )
    if found.returncode != 0:
        remote = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"origin/{ref}^{{commit}}"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert remote.returncode == 0 or shallow.stdout.strip() == "true", f"Colab ref {ref!r} does not exist here"
