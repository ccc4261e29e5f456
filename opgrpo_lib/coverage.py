"""SBERT coverage per situation (the authors' logged metric): shared by step 06 (``evaluate``, which adds the
summaries and confidence intervals) and the validation curve during training, so training imports no evaluation
stack."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .reward import Encoder, greedy_matches
from .text import eval_candidate_sentences, eval_reference_sentences


def sbert_matches(
    references: pd.DataFrame, candidates: Sequence[str | None], encoder: Encoder, threshold: float = 0.70
) -> tuple[pd.DataFrame, dict[str, int], int]:
    """(per-situation frame, skipped counts, missing candidates): greedy one-to-one matching of reference perspectives to candidate sentences (no masking).

    A reference without a candidate row is excluded and counted as ``missing_candidates`` (the same policy as
    :func:`evaluate.nli_overton`); a reference or candidate without sentences is skipped and counted (the authors' evaluator
    skips them too), so ``n`` can be below the number of references.
    """
    rows, skipped, missing = [], Counter(), 0
    index: dict[str, int] = {}

    def ids(sentences: list[str]) -> list[int]:
        return [index.setdefault(s, len(index)) for s in sentences]

    for prompt, answer, cand in zip(references["prompt"], references["answer"], candidates):
        if not isinstance(prompt, str) or not prompt.strip():
            skipped["missing prompt"] += 1
            continue
        if cand is None:
            missing += 1
            continue
        ref_s, cand_s = eval_reference_sentences(answer), eval_candidate_sentences(cand)
        if not ref_s:
            skipped["empty reference"] += 1
            continue
        if not cand_s:
            skipped["empty candidate"] += 1
            continue
        rows.append((prompt, ids(ref_s), ids(cand_s)))
    emb = encoder.encode(list(index)).astype(np.float64) if index else np.zeros((0, 1))
    records = []
    for prompt, r_ids, c_ids in rows:
        matched = greedy_matches(emb[r_ids] @ emb[c_ids].T, threshold)
        records.append(
            {
                "prompt": prompt,
                "matched": matched,
                "n_references": len(r_ids),
                "n_candidate_sentences": len(c_ids),
                "ratio": matched / len(r_ids),
                "hit_all": matched == len(r_ids),
            }
        )
    per = pd.DataFrame(
        records, columns=["prompt", "matched", "n_references", "n_candidate_sentences", "ratio", "hit_all"]
    )
    return per, dict(skipped), missing
