"""The reward-evaluator alignment check: its statistics by hand, its variants, and the step on the tiny profile."""

import numpy as np
import pandas as pd
import pytest

from opgrpo_lib.alignment import score_variants, summarize, variant_cfgs
from opgrpo_lib.config import load_profile
from opgrpo_lib.reward import SentenceEncoder, keyword_text_for


def _samples() -> pd.DataFrame:
    """Two situations x three samples: the score ranks situation A perfectly and situation B backwards."""
    return pd.DataFrame({
        "prompt": ["A"] * 3 + ["B"] * 3,
        "evaluator": [0.0, 0.5, 1.0, 0.2, 0.2, 0.8],
        "authors:total": [0.1, 0.2, 0.3, 0.3, 0.2, 0.1],
        "authors:coverage": [0, 0, 1, 1, 0, 0],
        "authors:matched": [0, 0, 1, 1, 0, 0],
        "format": [1.0] * 6,
        "uniqueness": [1.0] * 6,
    })  # fmt: skip


def test_best_of_n_gain_spearman_and_zero_coverage_by_hand():
    table = summarize(_samples(), reps=200, seed=0).set_index("score")
    total = table.loc["authors:total"]
    assert total["best_of_n_gain"] == pytest.approx(((1.0 - 0.5) + (0.2 - 0.4)) / 2)
    assert total["spearman_mean"] == pytest.approx((1.0 - np.sqrt(3) / 2) / 2)  # +1 and -0.866 (a tie in B)
    assert total["zero_coverage_rate"] == pytest.approx(4 / 6) and total["variant"] == "authors"
    assert table.loc["evaluator", "best_of_n_gain"] == pytest.approx(((1.0 - 0.5) + (0.8 - 0.4)) / 2)  # oracle
    assert table.loc["evaluator", "variant"] == "oracle"
    flat = table.loc["format"]  # a constant score ties everywhere: its pick is the random pick
    assert flat["best_of_n_gain"] == 0 and flat["spearman_situations"] == 0 and flat["variant"] == "shared"
    assert table.loc["authors:coverage", "ci_low"] <= table.loc["authors:coverage", "best_of_n_gain"]


def test_variants_change_one_thing_each_from_the_authors_reward(tiny_encoder_path):
    cfg = load_profile("tiny", {"reward.mask_references": True, "reward.weights": "early"})
    v = variant_cfgs(cfg, ["authors", "mask_references", "unmasked", "agree_base"])
    assert not v["authors"].mask_references and v["authors"].weights == "early", "options off, profile weights kept"
    assert v["mask_references"].mask_references and v["unmasked"].mask == "none"
    assert v["agree_base"].agree_with == [cfg.models.encoder]
    enc = SentenceEncoder(str(tiny_encoder_path), device="cpu")
    situation = "Telling a white lie to spare feelings"
    ref = "In the perspective of Honesty, Telling a white lie betrays trust.\nIn the perspective of Care, Sparing feelings."
    texts = ["In the perspective of Honesty, a white lie betrays trust.", "No perspectives here."]
    scores = score_variants([situation] * 2, texts, [ref] * 2, v, {"estimator": enc, cfg.models.encoder: enc})
    assert {"authors:total", "unmasked:coverage", "agree_base:matched", "format", "uniqueness"} <= set(scores)
    assert keyword_text_for(situation)  # the masked variants mask with the decoded chat prompt's words
