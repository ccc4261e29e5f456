"""Opening, running and saving a notebook in JupyterLab does not matter: git stores it stripped (the clean filter
``scripts/strip_notebook.py``) and ``make reproduce``'s skip key reads its code cells only."""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from opgrpo_lib.config import load_profile
from opgrpo_lib.pipeline import notebook_key, notebooks

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("strip_notebook", ROOT / "scripts" / "strip_notebook.py")
strip_notebook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_notebook)


def stored(path: Path) -> str:
    """The notebook as git stores it (the index version; the file itself outside a git checkout)."""
    out = subprocess.run(["git", "show", f":notebooks/{path.name}"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else path.read_text()


def lab_saved(text: str) -> str:
    """What JupyterLab writes after running every cell and saving (outputs, counts, kernel details, widget state)."""
    nb = json.loads(text)
    nb["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "name": "python",
        "version": "3.11.9",
        "pygments_lexer": "ipython3",
    }
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    for i, cell in enumerate(nb["cells"]):
        cell["metadata"]["jp-MarkdownHeadingCollapsed"] = True
        if cell["cell_type"] == "code":
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["done\n"]}]
            cell["metadata"]["scrolled"] = True
    return json.dumps(nb, indent=2) + "\n"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_a_lab_saved_notebook_strips_back_to_the_committed_one(path):
    text = stored(path)
    assert strip_notebook.strip(text) == text, "committed notebooks are stripped"
    assert strip_notebook.strip(lab_saved(text)) == text


def test_the_skip_key_ignores_what_jupyterlab_rewrites(tmp_path, monkeypatch):
    from opgrpo_lib import pipeline

    cfg = load_profile("tiny")
    nb = notebooks(["03"])[0]
    copy = tmp_path / nb.name
    copy.write_text(lab_saved(stored(nb)))
    assert notebook_key(cfg, copy) == notebook_key(cfg, nb)
    src = json.loads(nb.read_text())
    next(c for c in src["cells"] if c["cell_type"] == "code")["source"] += ["\nprint(1)"]
    copy.write_text(json.dumps(src))
    assert notebook_key(cfg, copy) != notebook_key(cfg, nb), "a code change does count"
    assert pipeline  # the module under test


def test_git_status_is_clean_after_a_lab_save(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no git")
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "scripts").mkdir()
    (repo / "scripts" / "strip_notebook.py").write_text((ROOT / "scripts" / "strip_notebook.py").read_text())
    (repo / ".gitattributes").write_text((ROOT / ".gitattributes").read_text())
    nb = repo / "notebooks" / "03_sft.ipynb"
    nb.write_text((ROOT / "notebooks" / "03_sft.ipynb").read_text())
    import sys

    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=repo,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    git("init", "-q")
    git("config", "filter.nbstrip.clean", f"{sys.executable} scripts/strip_notebook.py")
    git("add", ".")
    git("commit", "-qm", "init")
    nb.write_text(lab_saved(nb.read_text()))
    assert git("diff", "--stat") == ""
    git("add", ".")
    assert git("status", "--porcelain") == ""
