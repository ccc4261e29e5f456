"""Write the thin pipeline notebooks (source of truth for their cells). Run: python scripts/make_notebooks.py"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
REPO = "opgrpo/opgrpo"
REF = "v0.1.0"  # the pinned ref Colab installs; bump on release
BOOTSTRAP = (
    "# Colab only: clone the repo at a pinned ref and install `.[gpu]` (does nothing elsewhere).\n"
    "import sys\n"
    'if "google.colab" in sys.modules:\n'
    f"    !git clone -q https://github.com/{REPO}.git opgrpo && git -C opgrpo checkout -q {REF}\n"
    '    !pip install -q -e "opgrpo[gpu,notebooks,models]"\n'
    '    sys.path.insert(0, "opgrpo")'
)
SETUP = (
    "from opgrpo_lib import config, runs\n\n"
    "cfg = config.load_profile(profile, overrides)\n"
    "paths = runs.run_paths(cfg, run_dir)\n"
    "print(cfg.profile, cfg.config_hash, paths.root)"
)


def notebook(name: str, title: str, intro: str, cells: list[tuple[str, str]], default_profile: str = "cpu") -> None:
    badge = (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb)"
    )
    nb = nbf.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nb.cells = [nbf.v4.new_markdown_cell(f"# {title}\n\n{badge}\n\n{intro}"), nbf.v4.new_code_cell(BOOTSTRAP)]
    params = nbf.v4.new_code_cell(
        f'profile = "{default_profile}"  # configs/<profile>.yaml: tiny | cpu | paper\n'
        "run_dir = None  # default: runs/<profile>\n"
        'overrides = {}  # dotted keys, e.g. {"data.eval_per_split": 50}'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells += [params, nbf.v4.new_code_cell(SETUP)]
    for kind, src in cells:
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"
    nbf.write(nb, ROOT / "notebooks" / f"{name}.ipynb")


notebook(
    "01_data_prep",
    "01 · OP-V2 data",
    "Fetches the OP-V2 files (local folder first, else the authors' repository at a pinned commit, hash-checked), "
    "parses every answer into ordered perspectives and writes the train/eval splits.\n\n"
    "**Inputs:** `test_*.csv` (and `final_train.csv` for `paper`). **Outputs:** `runs/<profile>/data/{train,eval}.parquet`, "
    "`data_card.{json,md}`, `perspectives_per_row.png`; `results/<profile>/data_card.json`.\n\n"
    "Runtime: seconds on any profile.",
    [
        ("code", "from opgrpo_lib import data\n\nprepared = data.run(cfg, paths)"),
        ("md", "## Data card"),
        (
            "code",
            "from IPython.display import Image, Markdown, display\n\n"
            'display(Markdown((paths.data / "data_card.md").read_text()))\n'
            'display(Image(filename=str(paths.data / "perspectives_per_row.png")))',
        ),
        ("code", "prepared.eval.head()"),
    ],
)
