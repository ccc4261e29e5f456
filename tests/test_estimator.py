import numpy as np
import pandas as pd
import pytest

from opgrpo_lib.estimator import (
    JUDGE_PROMPT,
    LLMJudge,
    MiningReport,
    NameJudge,
    OutputLine,
    alignment_curve,
    judge_rounds,
    mine_triplets,
    output_lines,
    reference_output_pairs,
    separation,
    separation_auc,
    training_outputs,
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
    trip = pd.DataFrame(
        {
            "anchor": [f"a {i}" for i in range(8)],
            "positive": [f"p {i}" for i in range(8)],
            "negative": [f"n {i}" for i in range(8)],
        }
    )
    final = finetune(trip, str(tiny_encoder_path), tmp_path, cfg, device="cpu")
    before = SentenceTransformer(str(tiny_encoder_path), device="cpu").state_dict()
    after = SentenceTransformer(str(final), device="cpu").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "checkpoints" / "checkpoint-2").exists()
    # rerun resumes from the last checkpoint (already at max_steps: nothing left to train)
    finetune(trip, str(tiny_encoder_path), tmp_path, cfg, device="cpu")


PIN_FRAME = [
    situation("Lying to a friend", [("Honesty", "truth honest"), ("honesty", "truth honest honest"),
                                    ("Kindness", "kind feelings"), ("Law", "law truth")]),
    situation("s only one", [("Only", "truth")]),
    situation("s money", [("Money", "money"), ("Safety", "safety"), ("Risk", "risk")]),
    situation("s risk", [("Safety", "safety risk"), ("Care", "safety risk risk"), ("Kindness", "kind")]),
    situation("s law", [("Law", "law law"), ("Order", "law law law")]),
    situation("s kind", [("Kindness", "kind feelings feelings"), ("Honesty", "honest"), ("Care", "money")]),
]  # fmt: skip


def _triplets(out):
    return [tuple(r) for r in out[["prompt", "anchor", "positive", "negative", "kind"]].itertuples(index=False)]


def test_reference_mining_output_is_pinned():
    """Regression pin of the reference-mode mining (recorded before the refactor into typed pieces)."""
    frame = pd.DataFrame(PIN_FRAME)
    out, rep = mine_triplets(frame, WordEncoder(), NameJudge(), threshold=0.5, cross_situation=True)
    assert _triplets(out) == [
        ("Lying to a friend", "truth honest", "truth honest honest", "law truth", "within"),
        ("s money", "safety", "safety risk", "money", "across"),
        ("s risk", "kind", "kind feelings", "safety risk", "across"),
        ("s law", "law law", "law truth", "law law law", "across"),
        ("s kind", "honest", "truth honest honest", "money", "across"),
    ]
    assert (rep.situations, rep.triplets, rep.within_situation, rep.across_situations, rep.judge_calls) == (
        6,
        5,
        1,
        4,
        8,
    )
    assert rep.skipped == {"fewer than 2 sentences": 1}

    out, rep = mine_triplets(frame, WordEncoder(), NameJudge(), threshold=0.5, cross_situation=False)
    assert _triplets(out) == [("Lying to a friend", "truth honest", "truth honest honest", "law truth", "within")]
    assert (rep.triplets, rep.judge_calls) == (1, 4)
    assert rep.skipped == {"fewer than 2 sentences": 1, "no pair >= threshold": 2, "judge confirmed no pair": 2}

    judge = ScriptedJudge({frozenset(("safety risk", "safety risk risk")), frozenset(("law law", "law law law"))})
    out, rep = mine_triplets(frame, WordEncoder(), judge, threshold=0.5, cross_situation=True)
    assert _triplets(out) == [("s risk", "safety risk", "safety risk risk", "kind", "within")]
    assert (rep.triplets, rep.judge_calls) == (1, 5) and judge.calls == [3, 1, 1]
    assert rep.skipped == {
        "fewer than 2 sentences": 1,
        "judge confirmed no pair": 1,
        "no pair >= threshold": 2,
        "judge rejected no sentence": 1,
    }


# ---------------------------------------------------------------- typed pieces and the released-outputs pool
def test_judge_rounds_equal_a_sequential_scan_with_one_call_per_round():
    judge = ScriptedJudge({frozenset(("b", "x")), frozenset(("d", "x"))})
    queues = [
        [("", "a", "", "x"), ("", "b", "", "x"), ("", "c", "", "x")],
        [],
        [("", "d", "", "x")],
        [("", "e", "", "x"), ("", "f", "", "x")],
    ]
    rep = MiningReport("scripted")
    assert judge_rounds(judge, queues, True, rep) == [1, None, 0, None]
    assert judge.calls == [3, 2] and rep.judge_calls == 5  # round 0: queues 0, 2, 3; round 1: queues 0, 3
    assert judge_rounds(ScriptedJudge(set()), queues, False, MiningReport("x")) == [0, None, 0, 0]


def test_output_lines_use_the_reward_segmentation_and_strip_the_prefix():
    core = (
        "In the perspective of Honesty, Telling the truth\\nmatters.\\nFrom the perspective of Right to safety, "
        "People must be safe.\\nsome trailing words\\nIn the perspective of Care and concern for others"
    )
    core = core.replace("\\n", "\n")
    lines = output_lines(core)
    assert [(ln.name, ln.text) for ln in lines] == [
        ("Honesty", "Telling the truth matters."),
        ("Right to safety", "People must be safe.\nsome trailing words".replace("\n", " ")),
        ("care and concern for others", "In the perspective of Care and concern for others"),  # no ", ": kept whole
    ]
    assert lines[0].segment == "In the perspective of Honesty, Telling the truth\nmatters."


def outputs_of(mapping):
    return {p: [OutputLine(n, t, f"In the perspective of {n}, {t}") for n, t in items] for p, items in mapping.items()}


def test_mining_with_released_outputs_pairs_references_with_same_situation_output_lines():
    frame = pd.DataFrame(
        [
            situation("s1", [("Honesty", "truth honest"), ("Kindness", "kind feelings"), ("Law", "law")]),
            situation("s2", [("Safety", "safety risk"), ("Money", "money")]),  # output names match nothing
            situation("s3", [("Law", "law law"), ("Care", "kind")]),  # no output: reference pool only
        ]
    )
    outputs = outputs_of({
        "s1": [("honesty", "honest truth truth"), ("Courage", "truth honest honest"), ("Kindness", "kind")],
        "s2": [("Risk", "risk risk")],
        "other": [("Honesty", "truth")],  # not a situation of the frame: never used
    })  # fmt: skip
    enc = WordEncoder()
    out, rep = mine_triplets(frame, enc, NameJudge(), threshold=0.75, cross_situation=False, outputs=outputs)
    # s1: the most similar same-name (reference, output line) pair; the hard negative is the most similar sentence
    # of s1 (reference or output line) with another name: here the output line "Courage"
    assert _triplets(out) == [("s1", "truth honest", "honest truth truth", "truth honest honest", "output")]
    assert "truth" not in enc.seen  # the "other" situation's output line was never encoded
    assert rep.candidates == "released_outputs" and (rep.triplets, rep.from_outputs, rep.within_situation) == (1, 1, 0)
    assert rep.negatives_from_outputs == 1
    assert (rep.situations_with_outputs, rep.output_lines, rep.references_with_outputs) == (2, 4, 5)
    assert (rep.references_name_matched, rep.situations_name_matched) == (2, 1)  # Honesty and Kindness of s1
    assert rep.skipped == {"judge confirmed no pair": 1, "no pair >= threshold": 1}
    assert rep.candidate_pairs_outputs == 3 * 3 + 2 * 1  # every (reference, output line) pair: no cosine filter

    # a cosine rule on (reference, output line) pairs: the Honesty pair (cos ~0.95) passes 0.9, Kindness does not
    out, rep = mine_triplets(frame, WordEncoder(), NameJudge(), 0.75, False, outputs=outputs, output_threshold=0.9)
    assert out["kind"].tolist() == ["output"] and rep.candidate_pairs_outputs < 11

    # the labelled fallback: situations left without a pair take a same-name reference of another situation
    out, rep = mine_triplets(frame, WordEncoder(), NameJudge(), 0.75, True, outputs=outputs)
    assert dict(zip(out.prompt, out.kind)) == {"s1": "output", "s3": "across"}  # s2 has no namesake elsewhere
    assert (rep.from_outputs, rep.across_situations) == (1, 1)
    assert out[out.prompt == "s3"].iloc[0][["anchor", "positive"]].tolist() == ["law law", "law"]


def test_training_outputs_never_include_evaluation_situations():
    released = pd.DataFrame({"prompt": ["a", "b", "c"], "answer_p": ["In the perspective of X, y."] * 3})
    train, ev = pd.DataFrame({"prompt": ["a", "z"]}), pd.DataFrame({"prompt": ["b"]})
    kept, counts = training_outputs(released, train, ev)
    assert list(kept) == ["a"] and kept["a"] == [OutputLine("X", "y.", "In the perspective of X, y.")]
    assert counts == {"released_rows": 3, "training_situations": 1, "evaluation_excluded": 1, "other_excluded": 1}
    with pytest.raises(AssertionError, match="evaluation situations"):
        training_outputs(released, pd.DataFrame({"prompt": ["a", "b"]}), ev)


def test_separation_auc_hand_computed():
    # pairs (matched, unmatched): 0.9 beats 0.4 and 0.5, loses to 0.95; 0.5 beats 0.4, ties 0.5, loses to 0.95
    assert separation_auc([0.9, 0.5], [0.4, 0.5, 0.95]) == pytest.approx(3.5 / 6)
    assert separation_auc([0.8, 0.9], [0.1, 0.2]) == 1.0 and separation_auc([0.1], [0.8]) == 0.0
    assert np.isnan(separation_auc([], [0.3])) and np.isnan(separation_auc([0.3], []))


def test_reference_output_pairs_views_and_separation():
    frame = pd.DataFrame([situation("Lying", [("Honesty", "truth honest"), ("Kindness", "kind feelings")])])
    frame["answer"] = "In the perspective of Honesty, truth honest\nIn the perspective of Kindness, kind feelings"
    outputs = outputs_of({"Lying": [("honesty", "Lying is honest truth"), ("Law", "law")]})
    pairs = reference_output_pairs(frame, outputs, "mining")
    assert pairs[["ref", "line", "matched"]].values.tolist() == [
        [0, 0, True],
        [0, 1, False],
        [1, 0, False],
        [1, 1, False],
    ]
    assert pairs.iloc[0][["reference", "candidate"]].tolist() == ["truth honest", "[KW] is honest truth"]
    reward = reference_output_pairs(frame, outputs, "reward", keyword_text=lambda s: f"Topic: {s}")
    # the reward compares the whole reference line with the whole masked output segment
    assert reward.iloc[0][["reference", "candidate"]].tolist() == [
        "In the perspective of Honesty, truth honest",
        "In the perspective of honesty [KW] is honest truth",
    ]
    sep = separation(WordEncoder(), pairs, 0.7)
    assert (sep["pairs_matched"], sep["pairs_unmatched"]) == (1, 3) and sep["auc"] == 1.0
    assert sep["matched_at_0.7"] == 1.0 and sep["unmatched_at_0.7"] == 0.0  # cos 0.82 vs ~0
    with pytest.raises(ValueError, match="view"):
        reference_output_pairs(frame, outputs, "other")


def test_released_loader_checks_hashes(tmp_path, released_dir, monkeypatch):
    from opgrpo_lib.config import load_profile
    from opgrpo_lib.data import DataIntegrityError
    from opgrpo_lib.estimator import RELEASED_FILES, load_released_outputs

    monkeypatch.delenv("OPGRPO_DATA_DIR", raising=False)
    cfg = load_profile("tiny", {"estimator.released_dir": str(released_dir), "data.download": False})
    rel = load_released_outputs(cfg)
    assert rel.groupby("split").size().to_dict() == {"10p": 300, "5p": 300}
    for name in RELEASED_FILES.values():
        (tmp_path / name).write_bytes((released_dir / name).read_bytes().replace(b"truth", b"truht", 1))
    monkeypatch.setenv("OPGRPO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataIntegrityError, match="sha256"):
        load_released_outputs(load_profile("tiny", {"estimator.released_dir": str(tmp_path), "data.download": False}))
    with pytest.raises(FileNotFoundError, match="data.download is false"):
        load_released_outputs(
            load_profile("tiny", {"estimator.released_dir": str(tmp_path / "no"), "data.download": False})
        )


def _real_split(split, opv2_dir, released_dir, monkeypatch):
    from opgrpo_lib.config import load_profile
    from opgrpo_lib.data import parse_frame
    from opgrpo_lib.estimator import load_released_outputs

    monkeypatch.delenv("OPGRPO_DATA_DIR", raising=False)
    rel = load_released_outputs(load_profile("tiny", {"estimator.released_dir": str(released_dir)}))
    test, _ = parse_frame(pd.read_csv(opv2_dir / f"test_{split}.csv", keep_default_na=False), split)
    outputs, counts = training_outputs(rel[rel.split == split], test, test.iloc[0:0])
    assert counts["training_situations"] == 300
    return test, outputs


@pytest.mark.parametrize("split, matched, refs, sits", [("5p", 539, 1500, 270), ("10p", 978, 3000, 291)])
def test_released_outputs_name_coverage(split, matched, refs, sits, opv2_dir, released_dir, monkeypatch):
    """Measured on the real files: an exact perspective-name match exists for ~36 % of 5p and ~32 % of 10p reference
    perspectives, and for at least one perspective in 270/300 (5p) and 291/300 (10p) situations. The counts do not
    depend on the encoder (a constant one here; MiniLM below)."""
    test, outputs = _real_split(split, opv2_dir, released_dir, monkeypatch)
    _, rep = mine_triplets(test, ConstantEncoder(), NameJudge(), cross_situation=False, outputs=outputs)
    assert (rep.references_name_matched, rep.references_with_outputs, rep.situations_name_matched) == (
        matched,
        refs,
        sits,
    )
    assert rep.output_lines_unnamed == 0 and rep.situations_with_outputs == 300


@pytest.mark.slow
def test_released_outputs_minilm_mining(opv2_dir, released_dir, minilm_path, monkeypatch):
    """MiniLM on the first situations of each file: output-based triplets whose positive is a released line of the
    same situation; same-name (reference, output line) pairs separate from different-name ones; the name-match
    counts equal the constant-encoder ones."""
    from opgrpo_lib.reward import SentenceEncoder

    minilm = SentenceEncoder(minilm_path, device="cpu")
    for split in ("5p", "10p"):
        test, outputs = _real_split(split, opv2_dir, released_dir, monkeypatch)
        part = test.iloc[:8]
        out, rep = mine_triplets(part, minilm, NameJudge(), cross_situation=False, outputs=outputs)
        _, rep_const = mine_triplets(part, ConstantEncoder(), NameJudge(), cross_situation=False, outputs=outputs)
        assert rep.references_name_matched == rep_const.references_name_matched > 0
        assert rep.from_outputs >= 5 and set(out.kind) <= {"output", "within"}
        for r in out[out.kind == "output"].itertuples():
            assert r.positive in {ln.text for ln in outputs[r.prompt]}
        assert separation(minilm, reference_output_pairs(part, outputs), 0.7)["auc"] > 0.65


class ConstantEncoder:
    def encode(self, sentences):
        return np.ones((len(sentences), 2), dtype=np.float32) / np.sqrt(2)
