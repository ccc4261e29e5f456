"""Strip a notebook to what the repository stores: code and markdown, cell ids and tags; no outputs, execution
counts or volatile metadata (kernel version, widget state, timings), written exactly as ``make_notebooks.py``
writes. Used as a git clean filter (``.gitattributes``; ``make setup`` registers it), so opening, running and saving
a notebook in JupyterLab leaves ``git status`` clean.

    python scripts/strip_notebook.py < in.ipynb > out.ipynb     # the git filter
    python scripts/strip_notebook.py notebooks/*.ipynb          # in place
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def strip(text: str) -> str:
    nb = nbformat.reads(text, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags")
        cell["metadata"] = nbformat.from_dict({"tags": tags} if tags else {})
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.metadata = nbformat.from_dict({"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    return nbformat.writes(nb) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        sys.stdout.write(strip(sys.stdin.read()))
        return 0
    for name in argv:
        path = Path(name)
        text = path.read_text()
        clean = strip(text)
        if clean != text:
            path.write_text(clean)
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
