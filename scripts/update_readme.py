"""Regenerate the README's results block from the committed results/<profile>/ files.

python scripts/update_readme.py [--profile cpu] [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from opgrpo_lib.figures import readme_results_table

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def block(profile: str) -> str:
    return f"{START}\n{readme_results_table(ROOT / 'results' / profile)}\n{END}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="cpu")
    p.add_argument("--check", action="store_true", help="fail if the README is out of date")
    args = p.parse_args()
    readme = (ROOT / "README.md").read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block(args.profile), readme, flags=re.S)
    if args.check:
        return 0 if new == readme else 1
    (ROOT / "README.md").write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
