"""Collect the validation curves of the GRPO settings tried into one table (``opgrpo_lib.sweep``).

python scripts/validation_sweep.py --run A=/path/run_a --run B=/path/run_b --chosen B --out RUN/results/sweep
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opgrpo_lib.runs import atomic_write_text  # noqa: E402
from opgrpo_lib.sweep import best_points, collect  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR", help="a tried setting's run")
    p.add_argument("--chosen", help="the setting the profile adopts")
    p.add_argument("--out", required=True, type=Path, help="folder for validation_sweep.csv and its summary")
    a = p.parse_args()
    runs = {}
    for item in a.run:
        name, sep, path = item.partition("=")
        if not sep or not name:
            p.error(f"--run {item!r}: expected NAME=RUN_DIR")
        runs[name] = Path(path)
    try:
        table = collect(runs, a.chosen)
    except (FileNotFoundError, ValueError) as exc:  # a wrong folder or curves that cannot be compared: one line
        p.error(str(exc))
    summary = best_points(table)
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "validation_sweep.csv", table.to_csv(index=False))
    atomic_write_text(a.out / "validation_sweep_summary.csv", summary.to_csv(index=False))
    print(summary.to_string(index=False))
    print(f"wrote {a.out}/validation_sweep.csv and validation_sweep_summary.csv")


if __name__ == "__main__":
    main()
