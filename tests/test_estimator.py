import numpy as np
import pandas as pd
import pytest

from opgrpo_lib.estimator import (
    JUDGE_PROMPT,
    LLMJudge,
    NameJudge,
    alignment_curve,
    mine_triplets,
    triplet_accuracy,
)


class WordEncoder:
    """Deterministic bag-of-words encoder over a fixed vocabulary (hand-computable cosines); records its inputs."""

    VOCAB = ["[KW]", "truth", "honest", "kind", "feelings", "money", "law", "safety", "risk"]

    def __init__(self):
        self.seen = []

    def encode(self, sentences):
        self.seen += list(sentences)
        out = []
        for s in sentences:
            v = np.array([s.split().count(w) for w in self.VOCAB], dtype=float) + 1e-3
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def situation(prompt, items):
    return {"prompt": prompt, "perspectives": [{"name": n, "explanation": e} for n, e in items]}


class ScriptedJudge:
    name = "scripted"

    def __init__(self, same_pairs):
        self.same_pairs, self.calls = same_pairs, []

    def same(self, pairs):
        self.calls.append(len(pairs))
        return [frozenset((a, b)) in self.same_pairs for _, a, _, b in pairs]


def test_mining_rules_on_hand_made_answers():
    frame = pd.DataFrame(
        [
            situation("Lying to a friend", [("Honesty", "truth honest"), ("Honesty again", "truth honest honest"),
                                            ("Kindness", "kind feelings"), ("Law", "law")]),
            situation("Lying", [("Only one", "truth")]),  # < 2 sentences: skipped and counted
            situation("Money", [("A", "money"), ("B", "safety"), ("C", "risk")]),  # no pair >= 0.75: skipped
        ]
    )  # fmt: skip
    enc = WordEncoder()
    judge = ScriptedJudge({frozenset(("truth honest", "truth honest honest"))})
    out, rep = mine_triplets(frame, enc, judge, threshold=0.75, cross_situation=False)
    assert out[["anchor", "positive"]].values.tolist() == [["truth honest", "truth honest honest"]]
    # hard negative: the first sentence the judge rejects in descending cosine to the anchor
    assert out["negative"].tolist() == ["kind feelings"] or out["negative"].tolist() == ["law"]
    assert len(out) == 1, "at most one triplet per situation"
    assert rep.situations == 3 and rep.skipped == {"fewer than 2 sentences": 1, "no pair >= threshold": 1}
    # masking: the situation's keywords ("lying", "friend") become [KW] in the texts the encoder sees
    assert all("Lying" not in s and "friend" not in s for s in enc.seen)


def test_prefix_stripped_explanations_and_masking_are_what_gets_encoded():
    frame = pd.DataFrame(
        [situation("Telling the truth hurts", [("Honesty", "The truth matters."), ("Care", "Truth can hurt.")])]
    )
    enc = WordEncoder()
    mine_triplets(frame, enc, NameJudge(), threshold=0.99, cross_situation=False)
    assert enc.seen == ["The [KW] matters", "[KW] can hurt"]  # prefix gone, keywords masked, punctuation dropped


def test_name_judge_cross_situation_positive():
    frame = pd.DataFrame(
        [
            situation("s1", [("Honesty", "truth honest"), ("Kindness", "kind feelings"), ("Law", "law")]),
            situation("s2", [("honesty", "honest truth truth"), ("Safety", "safety risk")]),
        ]
    )
    out, rep = mine_triplets(frame, WordEncoder(), NameJudge(), threshold=0.99)
    assert rep.triplets == 2 and rep.across_situations == 2
    row = out[out.prompt == "s1"].iloc[0]
    assert (row.anchor, row.positive) == ("truth honest", "honest truth truth")
    assert row.negative in ("kind feelings", "law")


def test_llm_judge_parsing_and_prompt():
    assert LLMJudge.verdict("Answer: Yes, they do") and not LLMJudge.verdict("Answer: No\nYes")
    assert JUDGE_PROMPT.format(a="x", b="y").endswith("Sentence A: x\nSentence B: y\nAnswer:")


def test_evaluation_metrics_hand_computed():
    sims = pd.DataFrame({"sim_pos": [0.9, 0.6, 0.8, 0.5], "sim_neg": [0.3, 0.7, 0.85, 0.2]})
    assert triplet_accuracy(sims) == 0.5
    curve = alignment_curve(sims, [0.7, 0.85])
    # t=0.70: best candidates 0.9 (pos), 0.7 (neg), 0.85 (neg), 0.5 (pos, below) -> 3 matched, 1 correct
    assert curve.iloc[0].tolist()[:5] == [0.7, 3, 1, pytest.approx(1 / 3), 0.25]
    # t=0.85: 0.9 (pos) and 0.85 (neg) -> precision 0.5, recall 0.25
    assert curve.iloc[1]["precision"] == 0.5 and curve.iloc[1]["recall"] == 0.25


def test_two_step_finetune_changes_the_tiny_encoder(tmp_path, tiny_encoder_path):
    import torch
    from sentence_transformers import SentenceTransformer

    from opgrpo_lib.config import load_profile
    from opgrpo_lib.estimator import finetune

    cfg = load_profile("tiny", {"estimator.max_steps": 2, "estimator.batch_size": 4, "estimator.save_steps": 1})
    trip = pd.DataFrame({"anchor": [f"a {i}" for i in range(8)], "positive": [f"p {i}" for i in range(8)],
                         "negative": [f"n {i}" for i in range(8)]})  # fmt: skip
    final = finetune(trip, str(tiny_encoder_path), tmp_path, cfg, device="cpu")
    before = SentenceTransformer(str(tiny_encoder_path), device="cpu").state_dict()
    after = SentenceTransformer(str(final), device="cpu").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "checkpoints" / "checkpoint-2").exists()
    # rerun resumes from the last checkpoint (already at max_steps: nothing left to train)
    finetune(trip, str(tiny_encoder_path), tmp_path, cfg, device="cpu")
