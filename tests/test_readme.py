"""scripts/update_readme.py reads how many rows step 05 generated from its manifest (no guessing from a time)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "update_readme", Path(__file__).resolve().parents[1] / "scripts" / "update_readme.py"
)
update_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_readme)


def test_generation_time_says_what_was_reused():
    m = {"step": "05_generate", "timings_s": {"sft": 30.0}}
    reused = {**m, "rows": {"sft": {"generated": 0, "reused": 300}}}
    partly = {**m, "rows": {"sft": {"generated": 100, "reused": 200}}}
    fresh = {**m, "rows": {"sft": {"generated": 300, "reused": 0}}}
    assert update_readme._minutes(reused) == "rows reused (same key)"
    assert update_readme._minutes(partly) == "0.5 min (100 of 300 rows generated, the rest reused)"
    assert update_readme._minutes(fresh) == "0.5 min"
    # an older manifest without row counts: its time may be that of reused rows, so no time is claimed
    assert update_readme._minutes(m).startswith("not recorded")
    assert update_readme._minutes({"step": "03_sft", "timings_s": {"train": 30.0}}) == "0.5 min"
