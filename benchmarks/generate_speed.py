"""Step 05's sampler: ``generate.sample_compact`` (finished rows leave the batch and its KV cache; the nucleus from
the top-k scores) vs ``lm.sample`` (``transformers`` ``generate`` with the per-row sampler), on the same OP-V2
situations, seeds and settings. Prints whether the texts are identical and the time ratio.

    python benchmarks/generate_speed.py [--policy HuggingFaceTB/SmolLM2-135M-Instruct | runs/cpu/sft/policy]
                                        [--rows 48] [--max-new-tokens 320] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

from common import best_of, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="hub id, tiny:… or a folder")
    ap.add_argument("--rows", type=int, default=48, help="situations in the batch (the cpu profile's batch_size)")
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from opgrpo_lib import generate, lm
    from opgrpo_lib.models import resolve
    from opgrpo_lib.prompts import IMPLICIT, render

    if args.threads:
        torch.set_num_threads(args.threads)
    policy = args.policy if Path(args.policy).is_dir() else resolve(args.policy)
    model = lm.load(policy, "cpu")
    situations = pd.read_csv(ROOT.parent / "shared" / "data" / "opv2" / "test_5p.csv")["prompt"].iloc[: args.rows]
    msgs = [render(IMPLICIT, s) for s in situations]
    seeds = [lm.row_seed(42, s) for s in situations]
    settings = (args.max_new_tokens, args.temperature, args.top_p)
    t_ref, ref = best_of(lambda: lm.sample(model, msgs, *settings, None, seeds), 1)
    t_fast, fast = best_of(lambda: generate.sample_compact(model, msgs, *settings, seeds), 1)
    tokens = [len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ref]
    res = {
        "policy": args.policy, "rows": len(msgs), "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
        "identical": ref == fast, "rows_differing": sum(a != b for a, b in zip(ref, fast)),
        "mean_tokens": sum(tokens) / len(tokens), "max_tokens": max(tokens),
        "reference_s": round(t_ref, 2), "compact_s": round(t_fast, 2), "speedup_vs_reference": round(t_ref / t_fast, 2),
    }  # fmt: skip
    report(res, args.json)


if __name__ == "__main__":
    main()
