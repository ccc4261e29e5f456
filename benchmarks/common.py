"""Shared by the benchmark scripts (and the reward tests, which score the same realistic batches)."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from opgrpo_lib.text import two_block


def best_of(fn, repeats: int) -> tuple[float, object]:
    """(minimum wall time over ``repeats`` calls, the last result): min-of-N, as this machine's speed swings."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def report(res: dict, as_json: bool) -> None:
    """One JSON line (``--json``, what the tests read) or one aligned ``key: value`` line per result."""
    if as_json:
        print(json.dumps(res))
        return
    width = max(map(len, res), default=0)
    for k, v in res.items():
        print(f"{k:>{width}}: {v}")


def grpo_like_batch(outputs: Any, n_prompts: int, group: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(situations, completions, references): ``group`` rollouts per prompt built from released outputs (a frame
    with ``prompt``, ``answer_p`` = core, ``answers`` = summary, ``answer`` = reference), perturbed as sampled
    rollouts are: subsets and reorderings of the perspective lines, a line borrowed from another situation,
    a duplicated line, a missing layout, a truncation. Rollout 0 is the released output itself."""
    rng = np.random.default_rng(seed)
    rows = outputs.iloc[:n_prompts].to_dict("records")
    pool = [line for r in outputs.to_dict("records") for line in str(r["answer_p"]).splitlines() if line.strip()]
    situations, completions, references = [], [], []
    for r in rows:
        lines = [x for x in str(r["answer_p"]).splitlines() if x.strip()]
        for g in range(group):
            if g:
                keep = [x for x in lines if rng.random() < 0.85] or lines[:1]
                rng.shuffle(keep)
                if rng.random() < 0.2:
                    keep.insert(int(rng.integers(0, len(keep) + 1)), pool[int(rng.integers(len(pool)))])
                if rng.random() < 0.15:
                    keep.append(keep[0])
            else:
                keep = lines
            text = two_block("\n".join(keep), r["answers"])
            if g and rng.random() < 0.15:
                text = "\n".join(keep) + "\n\n" + str(r["answers"])  # no layout
            elif g and rng.random() < 0.1:
                text = text[: int(len(text) * rng.uniform(0.3, 0.9))]  # cut at max completion length
            situations.append(r["prompt"])
            completions.append(text)
            references.append(r["answer"])
    return situations, completions, references
