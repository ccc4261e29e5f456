import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from opgrpo_lib.evaluate import (
    CachedEncoder,
    join_candidates,
    nli_overton,
    sbert_coverage,
    sbert_sentences,
    situation_score,
    split_output_sentences,
    token_stats,
)
from opgrpo_lib.nli import NLIModel, NLIUnavailable, load_nli
from opgrpo_lib.stats import bootstrap_ci, describe, paired_bootstrap, relative_gain

REFS = pd.DataFrame(
    {
        "prompt": ["s1", "s2", "s3"],
        "answer": [
            "In the perspective of A, alpha one.\nIn the perspective of B, beta two.",
            "In the perspective of C, gamma three.\nIn the perspective of D, delta four.\nIn the perspective of E, eps five.",
            "In the perspective of F, phi six.",
        ],
    }
)


class TableEncoder:
    """Embeds a sentence by the first word that appears in a fixed table (controlled cosines)."""

    def __init__(self, table):
        self.table = {k: np.asarray(v, float) / np.linalg.norm(v) for k, v in table.items()}

    def encode(self, sentences):
        out = []
        for s in sentences:
            key = next((k for k in self.table if k in s.lower()), None)
            out.append(self.table[key] if key else np.array([0.0, 0.0, 0.0, 1.0]))
        return np.asarray(out, dtype=np.float32)


def test_sbert_coverage_hand_computed():
    enc = TableEncoder(
        {
            "alpha": [1, 0, 0, 0],
            "beta": [0, 1, 0, 0],
            "gamma": [0, 0, 1, 0],
            "delta": [0, 0, 1, 0.2],
            "eps": [0, 1, 0, 0],
        }
    )
    cands = pd.DataFrame(
        {
            "prompt": ["s1", "s2", "s2", "zzz"],
            "out": ["Alpha is key. Beta too! [1] Unrelated", "Gamma matters. Nothing else", "dup ignored", "x"],
        }
    )
    joined = join_candidates(REFS, cands, "out")
    assert joined[2] is None and joined[1] == "Gamma matters. Nothing else"  # first duplicate kept
    per, summary = sbert_coverage(REFS, joined, enc, threshold=0.7)
    # s1: alpha↔"Alpha is key", beta↔"Beta too" → 2/2; s2: gamma and delta compete for one sentence → 1/3; s3 skipped
    assert per["ratio"].tolist() == [1.0, pytest.approx(1 / 3)]
    assert summary["n"] == 2 and summary["hit_all"] == 1 and summary["absolute_accuracy"] == 0.5
    assert summary["relative_accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert summary["std"] == pytest.approx(np.std([1, 1 / 3]))
    assert summary["std_error"] == pytest.approx(np.std([1, 1 / 3]) / np.sqrt(2))
    assert summary["skipped"] == {} and summary["missing_candidates"] == 1


def test_cached_encoder_encodes_each_sentence_once_and_scores_the_same():
    class Counting(TableEncoder):
        calls: list[list[str]] = []

        def encode(self, sentences):
            self.calls.append(list(sentences))
            return super().encode(sentences)

    enc = Counting({"alpha": [1, 0, 0, 0], "beta": [0, 1, 0, 0], "gamma": [0, 0, 1, 0], "delta": [0, 0, 1, 0.2]})
    cands = pd.DataFrame({"prompt": ["s1", "s2"], "a": ["Alpha. Beta!", "Gamma."], "b": ["Beta. Delta.", None]})
    corpus = sbert_sentences([(REFS, cands, ("a", "b"))])
    assert len(corpus) == len(set(corpus)) == 6 + 4 and corpus == sorted(corpus)
    cached = CachedEncoder(enc)
    cached.encode(corpus)
    for col in ("a", "b", "a"):  # every later call is answered from the cache, with the uncached scores
        texts = join_candidates(REFS, cands, col)
        assert sbert_coverage(REFS, texts, cached)[0].equals(sbert_coverage(REFS, texts, TableEncoder(enc.table))[0])
    assert enc.calls == [corpus]
    assert cached.encode(["zeta", corpus[0], "zeta"]).shape == (3, 4) and enc.calls[-1] == ["zeta"]
    assert cached.encode([]).shape[0] == 0


def test_sbert_skips_empty_sides():
    enc = TableEncoder({"alpha": [1, 0, 0, 0]})
    per, summary = sbert_coverage(REFS, ["   ", "...", None], enc)
    assert summary["n"] == 0 and summary["skipped"] == {"empty candidate": 2} and summary["missing_candidates"] == 1
    assert summary["relative_accuracy"] is None


class MatrixNLI:
    """Returns P(entail) from a table keyed by (premise, hypothesis); records call sizes."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def entailment(self, premises, hypotheses, progress=False):
        self.calls.append(len(premises))
        return np.array([self.table.get((p, h), 0.0) for p, h in zip(premises, hypotheses)])


def test_nli_protocol_hand_computed():
    t = {
        ("alpha one.", "First claim."): 0.9, ("alpha one.", "Second claim."): 0.2,
        ("beta two.", "First claim."): 0.1, ("beta two.", "Second claim."): 0.3,
        ("gamma three.", "Only."): 0.5, ("delta four.", "Only."): 0.2, ("eps five.", "Only."): 0.29,
    }  # fmt: skip
    model = MatrixNLI(t)
    per, summary = nli_overton(REFS, ["First claim. Second claim.", "Only.", None], model)
    # s1: mean(max(.9,.2), max(.1,.3)) = .6 ; s2: mean(.5,.2,.29) = .33 (not > .33) ; s3: missing → excluded
    assert per["score"].tolist() == pytest.approx([0.6, 0.33])
    assert per["covered"].tolist() == [True, False]
    assert summary["accuracy"] == pytest.approx(1 / 2) and summary["n"] == 2
    assert summary["missing_candidates"] == 1
    assert summary["mean_score"] == pytest.approx(0.465)
    empty, _ = nli_overton(REFS.iloc[:1], [""], model)
    assert empty["score"].tolist() == [0.0], "an empty output scores 0"
    assert model.calls[0] == 7, "one batched call across situations, each distinct pair once"


def test_situation_score_edges():
    assert situation_score(np.zeros((0, 0))) == 0.0
    assert situation_score(np.array([[0.2, 0.8], [0.5, 0.1]])) == pytest.approx(0.65)


def test_sentence_splitter():
    assert split_output_sentences("Dr. Smith agrees. It is fine! ") == ["Dr. Smith agrees.", "It is fine!"]
    assert split_output_sentences("   ") == []


def test_tiny_nli_model_batched_equals_single():
    model = NLIModel("tiny:nli", batch_size=3)
    assert model.entail_index == 2  # label named ENTAILMENT
    prem = ["a b c", "people value honesty", "x"] * 3
    hyp = ["d", "honesty is valued by many people today", "y z"] * 3
    batched = model.entailment(prem, hyp)
    single = np.array([model.entailment([p], [h])[0] for p, h in zip(prem, hyp)])
    assert np.allclose(batched, single, atol=1e-6) and ((0 < batched) & (batched < 1)).all()


def test_missing_nli_model_is_a_clear_error():
    with pytest.raises(NLIUnavailable, match="no NLI weights"):
        NLIModel("microsoft/deberta-v2-xlarge-mnli")
    model, status = load_nli("microsoft/deberta-v2-xlarge-mnli")  # steps report the reason instead of failing
    assert model is None and status.startswith("skipped:") and "no NLI weights" in status
    assert load_nli(None) == (None, "skipped: the profile names no NLI model (none can be obtained offline)")
    model, status = load_nli("tiny:nli", batch_size=3)
    assert isinstance(model, NLIModel) and status == "ran with tiny:nli"


def test_token_stats():
    class Tok:
        def tokenize(self, t):
            return list(t.replace(" ", ""))

    s = token_stats(["ab cd", None, "e"], Tok())
    assert (s.n, s.mean_tokens, s.mean_words) == (2, 2.5, 1.5)


def test_stats():
    d = describe([1, 2, 3, 4])
    assert d["mean"] == 2.5 and d["std"] == pytest.approx(np.std([1, 2, 3, 4]))
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    assert lo < 0.5 < hi
    p = paired_bootstrap([1.0] * 30 + [0.0] * 10, [0.0] * 30 + [1.0] * 10, seed=0)
    assert p["diff"] == 0.5 and p["ci_low"] > 0 and p["p_value"] < 0.01
    assert relative_gain(1.374, 1.0) == pytest.approx(0.374)


@pytest.mark.slow
def test_eval_cli_json(opv2_dir, released_dir, tmp_path, minilm_path):
    cands = pd.read_csv(released_dir / "grpo_eval_summaries_clean.csv", keep_default_na=False).iloc[:20]
    cands.to_csv(tmp_path / "c.csv", index=False)
    base = [sys.executable, "-m", "opgrpo_lib.cli", "eval"]
    args = ["--references", str(opv2_dir / "test_5p.csv"), "--candidates", str(tmp_path / "c.csv"), "--json"]
    out = subprocess.run(
        base + ["sbert", *args, "--candidate-column", "answer_p", "--model", minilm_path, "--threshold", "0.7"],
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] == 20 and res["missing_candidates"] == 280 and "280 reference rows" in out.stderr
    assert {"n", "hit_all", "absolute_accuracy", "relative_accuracy"} <= set(res)
    assert res["absolute_accuracy"] == res["hit_all"] / 20
    out = subprocess.run(
        base + ["nli", *args, "--candidate-column", "answers", "--model", "tiny:nli"],
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"n", "accuracy", "mean_score"} <= set(res) and res["n"] == 20  # the same policy as SBERT
    assert res["missing_candidates"] == 280
    bad = subprocess.run(base + ["sbert", *args, "--candidate-column", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing column" in bad.stderr
    for thr in ("1.5", "-0.5", "nan"):
        bad = subprocess.run(
            base + ["sbert", *args, "--candidate-column", "answer_p", "--threshold", thr],
            capture_output=True,
            text=True,
        )
        assert bad.returncode == 2 and "[0, 1]" in bad.stderr and "Traceback" not in bad.stderr
    encoder_as_nli = subprocess.run(
        base + ["nli", *args, "--candidate-column", "answers", "--model", "tiny:encoder"],
        capture_output=True,
        text=True,
    )
    assert encoder_as_nli.returncode == 2 and "no entailment label" in encoder_as_nli.stderr
    assert "Traceback" not in encoder_as_nli.stderr
    unwritable = subprocess.run(
        base
        + ["sbert", *args, "--candidate-column", "answer_p", "--model", minilm_path, "--per-row", "/proc/nope/x.csv"],
        capture_output=True,
        text=True,
    )
    assert unwritable.returncode == 2 and "--per-row" in unwritable.stderr and "Traceback" not in unwritable.stderr


def test_paired_comparisons_per_split_and_pooled():
    from opgrpo_lib.evaluate import paired_comparisons

    rows = []
    for split in ("5p", "10p", "6p"):
        for i in range(10):
            for system, ratio in (("op_grpo", 0.6 + 0.01 * i), ("sft", 0.5)):
                rows.append(
                    {
                        "prompt": f"{split}-{i}",
                        "split": split,
                        "system": system,
                        "ratio": ratio,
                        "threshold": 0.7,
                        "text": "core",
                        "evaluator": "independent",
                    }
                )
    comp = paired_comparisons(pd.DataFrame(rows), pd.DataFrame(), "op_grpo", 200, 0)
    assert set(comp["split"]) == {"5p", "10p", "6p", "all", "5p+10p"}
    pooled = comp[comp["split"] == "5p+10p"].iloc[0]
    assert pooled["n"] == 20 and pooled["ci_low"] > 0 and pooled["evaluator"] == "independent"
    diffs = [0.1 + 0.01 * i for i in range(10)] * 2  # 5p and 10p: op_grpo − sft per situation
    assert pooled["sd_diff"] == pytest.approx(np.std(diffs, ddof=1))
    assert pooled["mde_80"] == pytest.approx((1.959964 + 0.841621) * np.std(diffs, ddof=1) / np.sqrt(20), rel=1e-5)


def test_minimum_detectable_effect_matches_the_power_of_a_paired_z_test():
    """At the MDE, a two-sided 5 % z-test on n paired differences with that SD rejects 80 % of the time."""
    from statistics import NormalDist

    from opgrpo_lib.stats import min_detectable_effect

    sd, n = 0.178, 400
    mde = min_detectable_effect(sd, n)
    se = sd / np.sqrt(n)
    power = 1 - NormalDist().cdf(1.959964 - mde / se) + NormalDist().cdf(-1.959964 - mde / se)
    assert power == pytest.approx(0.80, abs=1e-4) and mde == pytest.approx(0.0249, abs=2e-4)
    assert np.isnan(min_detectable_effect(sd, 1))


def test_the_validation_curve_reports_what_it_can_resolve():
    from opgrpo_lib.validation import versus_start

    start = {"step": 0, "per_situation": {f"s{i}": 0.3 for i in range(30)}}
    later = {"step": 8, "per_situation": {f"s{i}": 0.3 + (0.1 if i % 2 else 0.0) for i in range(30)}}
    first, second = versus_start([start, later], seed=0, reps=300)
    assert "per_situation" not in first and "vs_start" not in first
    assert second["vs_start"] == pytest.approx(0.05) and second["vs_start_ci_low"] > 0
    assert second["vs_start_mde_80"] == pytest.approx(2.8016 * np.std([0.0, 0.1] * 15, ddof=1) / np.sqrt(30), rel=1e-3)
