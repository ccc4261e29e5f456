import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import reference_reward as ref
from common import grpo_like_batch  # benchmarks/common.py (on pytest's pythonpath)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opgrpo_lib.config import RewardCfg, load_profile
from opgrpo_lib.reward import (
    COMPONENTS,
    OPReward,
    OPRewardScorer,
    SentenceEncoder,
    coverage_ladder,
    format_score,
    greedy_matches,
    keyword_text_for,
    redundant_count,
    uniqueness_ladder,
)
from opgrpo_lib.text import LAYOUT_RE, MalformedReference, check_layout, stopwords

REF = "In the perspective of Honesty, Telling the truth matters.\nIn the perspective of Kindness, Sparing feelings helps."
GOOD = (
    "<core perspectives>\nIn the perspective of Honesty, truth matters.\nIn the perspective of Care, feelings.\n"
    "</core perspectives>\n\n<summary>\nHonesty and care both count.\n</summary>"
)


class HashEncoder:
    """Deterministic fake encoder: a random unit vector per distinct string (plus exact-duplicate similarity 1)."""

    def __init__(self, dim=16):
        self.dim, self.calls = dim, []

    def encode(self, sentences):
        self.calls.append(list(sentences))
        rows = []
        for s in sentences:
            seed = int.from_bytes(hashlib.sha256(s.encode("utf-8", "surrogatepass")).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(sentences), self.dim)


# ------------------------------------------------------------------ pure terms
@pytest.mark.parametrize(
    "rate,bucket",
    [(0, 0), (1e-9, 1), (0.19999, 1), (0.2, 2), (0.39, 2), (0.4, 3), (0.6, 4), (0.79, 4), (0.8, 5), (1, 5)],
)
def test_coverage_ladder(rate, bucket):
    assert coverage_ladder(rate) == bucket == ref.bucket(rate)


@pytest.mark.parametrize("rate,value", [(1.0, 1.0), (0.9, 0.75), (0.8, 0.4), (0.61, 0.4), (0.6, 0.0), (0.0, 0.0)])
def test_uniqueness_ladder(rate, value):
    assert uniqueness_ladder(rate) == value == ref.uniq_bucket(rate)


def test_greedy_matching_hand_case():
    # greedy takes (0,0)=.9 first, so row 1 can only use col 1 (.5 < .7): 1 match, although 2 would be possible
    sim = np.array([[0.9, 0.85], [0.8, 0.5]])
    assert greedy_matches(sim, 0.7) == 1 == len(ref.mutual_best_pairs(sim, 0.7))
    assert greedy_matches(np.zeros((3, 0)), 0.7) == 0
    assert greedy_matches(np.array([[0.7]]), 0.7) == 1  # the threshold is inclusive


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**32 - 1), st.booleans())
def test_greedy_matching_equals_iterative_argmax(n, m, seed, ties):
    rng = np.random.default_rng(seed)
    sim = rng.choice([0.5, 0.7, 0.8, 0.9], size=(n, m)) if ties else rng.uniform(0.4, 1.0, size=(n, m))
    assert greedy_matches(sim, 0.7) == len(ref.mutual_best_pairs(sim, 0.7))


def test_redundancy_scan_skips_marked_rows():
    sim = np.eye(3)
    sim[0, 1] = sim[1, 0] = 0.8  # 1 duplicates 0
    sim[1, 2] = sim[2, 1] = 0.9  # 2 duplicates only 1, which is already redundant: 2 stays
    assert redundant_count(sim, 0.78) == 1


def test_format_score_cases():
    assert format_score(GOOD) == 2.0
    dup = GOOD.replace("In the perspective of Care, feelings.", "In the perspective of Honesty, truth matters.")
    assert format_score(dup) == 2.0 - 0.5 - 0.5  # one duplicate segment + one duplicate name
    no_echo = GOOD.replace("Honesty and care both count.", "Nothing here.")
    assert format_score(no_echo) == 1.0  # 2 - 1 (no name echoed in the summary)
    assert format_score("plain prose without perspectives") == 0.0
    assert format_score("") == 0.0


# ------------------------------------------------------------------ batched vs reference
def _check_equal(parts, kts, comps, refs, encode, **options):
    stop = stopwords()
    for i, (p, k, c, r) in enumerate(zip(parts, kts, comps, refs)):
        want = ref.score_one(encode, stop, k, c, r, **options)
        got = {key: getattr(p, key) for key in COMPONENTS}
        assert got == want, f"row {i}: {got} != {want}"


EDGE = [
    GOOD,
    GOOD.upper(),
    "",
    "   \n  ",
    "<core perspectives></core perspectives><summary>x</summary>",
    "<core perspectives>a</core perspectives> junk <summary>b</summary>",
    "<core perspectives>In the perspective of Honesty, truth matters.\nIn the perspective of Honesty, truth matters.</core perspectives><summary>honesty</summary>",
    "In the perspective of Honesty, Telling the truth matters.\nIn the perspective of Kindness, Sparing feelings helps.",
    "<summary>only a summary</summary>",
    "<core perspectives><core perspectives>nested</core perspectives></core perspectives><summary>s</summary>",
    "!!! ... ???",
    "ünïcödé 漢字 🙂\nIn the perspective of Ñame, ünïcode.",
]


def test_edge_cases_equal_reference_tiny_encoder(tiny_encoder_path):
    enc = SentenceEncoder(str(tiny_encoder_path), device="cpu")
    kts = [keyword_text_for("Telling a white lie")] * len(EDGE)
    parts = OPRewardScorer(enc).score(kts, EDGE, [REF] * len(EDGE))
    _check_equal(parts, kts, EDGE, [REF] * len(EDGE), enc.encode)
    assert parts[0].valid_format and not parts[2].valid_format and parts[2].tag == -0.2


@pytest.mark.slow
@pytest.mark.parametrize(
    "split,file", [("5p", "grpo_eval_summaries_clean.csv"), ("10p", "grpo_eval_summaries_clean_10p.csv")]
)
def test_batched_equals_reference_on_released_outputs(split, file, opv2_dir, released_dir, minilm_path):
    refs = pd.read_csv(opv2_dir / f"test_{split}.csv", keep_default_na=False)
    outs = pd.read_csv(released_dir / file, keep_default_na=False)
    frame = outs.merge(refs, on="prompt")
    assert len(frame) == 300
    sits, comps, rfs = grpo_like_batch(frame, n_prompts=8, group=4, seed=1)
    kts = [keyword_text_for(s) for s in sits]
    enc = SentenceEncoder(minilm_path, device="cpu")
    parts = OPRewardScorer(enc).score(kts, comps, rfs)
    _check_equal(parts, kts, comps, rfs, enc.encode)
    assert len({p.coverage for p in parts}) > 1, "a realistic batch spreads over the coverage ladder"


@pytest.mark.parametrize("mask_refs, agreeing", [(True, False), (False, True), (True, True)])
def test_reward_options_equal_reference_tiny_encoder(tiny_encoder_path, mask_refs, agreeing):
    """``reward.mask_references`` and ``reward.agree_with`` against the independent per-rollout reference, on the
    edge cases and on references that share the situation's words (where masking both sides matters)."""
    enc = SentenceEncoder(str(tiny_encoder_path), device="cpu")
    other = HashEncoder()
    situation = "Telling the truth about sparing feelings"
    comps = [*EDGE, REF, REF.replace("Telling the truth", "Being honest"), GOOD.replace("truth", "telling the truth")]
    kts = [keyword_text_for(situation)] * len(comps)
    cfg = RewardCfg(mask_references=mask_refs, agree_with=["hash"] if agreeing else [])
    parts = OPRewardScorer(enc, cfg, [other] if agreeing else []).score(kts, comps, [REF] * len(comps))
    agree = (other.encode,) if agreeing else ()
    _check_equal(parts, kts, comps, [REF] * len(comps), enc.encode, mask_refs=mask_refs, agree=agree)
    sims = [
        d.similarity
        for d in OPRewardScorer(enc, cfg, [other] if agreeing else []).score_detailed(kts, comps, [REF] * len(comps))
    ]
    plain = [d.similarity for d in OPRewardScorer(enc).score_detailed(kts, comps, [REF] * len(comps))]
    assert any(not np.array_equal(a, b) for a, b in zip(sims, plain)), "the option changes what is compared"


@pytest.mark.slow
def test_reward_options_equal_reference_on_released_outputs(opv2_dir, released_dir, minilm_path, tiny_encoder_path):
    refs = pd.read_csv(opv2_dir / "test_5p.csv", keep_default_na=False)
    outs = pd.read_csv(released_dir / "grpo_eval_summaries_clean.csv", keep_default_na=False)
    sits, comps, rfs = grpo_like_batch(outs.merge(refs, on="prompt"), n_prompts=6, group=4, seed=2)
    kts = [keyword_text_for(s) for s in sits]
    enc, tiny = SentenceEncoder(minilm_path, device="cpu"), SentenceEncoder(str(tiny_encoder_path), device="cpu")
    cfg = RewardCfg(mask_references=True, agree_with=[str(tiny_encoder_path)])
    parts = OPRewardScorer(enc, cfg, [tiny]).score(kts, comps, rfs)
    _check_equal(parts, kts, comps, rfs, enc.encode, mask_refs=True, agree=(tiny.encode,))


def test_overlong_option_is_trls_soft_punishment():
    """``reward.overlong_cache``: TRL's own function (not a copy), as a second GRPO reward; checked at load."""
    from types import SimpleNamespace

    from opgrpo_lib.config import ConfigError
    from opgrpo_lib.train import overlong_reward

    cfg = load_profile("tiny", {"reward.overlong_cache": 8})  # max_completion_length 48
    (fn,) = overlong_reward(cfg, SimpleNamespace(max_completion_length=48))
    assert type(fn).__module__.startswith("trl.rewards")
    assert fn(completion_ids=[[1] * 40, [1] * 44, [1] * 48]) == [0.0, -0.5, -1.0]
    assert overlong_reward(load_profile("tiny"), SimpleNamespace(max_completion_length=48)) == []
    with pytest.raises(ConfigError, match=r"reward\.overlong_cache: 48 must be below"):
        load_profile("tiny", {"reward.overlong_cache": 48})


def test_an_agreement_model_that_is_not_here_is_refused_before_any_step(tmp_path, monkeypatch):
    from opgrpo_lib.cli import main
    from opgrpo_lib.config import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"reward\.agree_with\[0\]"):
        load_profile("tiny", {"reward.agree_with": ["run:grpo"]})
    run = [
        "data",
        "--profile",
        "tiny",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "reward.agree_with=[nobody/no-model]",
    ]
    assert main(run) == 2 and not (tmp_path / "run").exists()


def test_each_distinct_sentence_encoded_once():
    enc = HashEncoder()
    comps = [GOOD, GOOD, GOOD.replace("Care", "Kindness")]
    OPRewardScorer(enc).score([keyword_text_for("x")] * 3, comps, [REF] * 3)
    assert len(enc.calls) == 1
    assert len(enc.calls[0]) == len(set(enc.calls[0]))


def test_weights_and_ablation():
    enc = HashEncoder()
    early = OPRewardScorer(enc, load_profile("tiny", {"reward.weights": "early"}).reward)
    p = early.score(["x"], [GOOD], [REF])[0]
    assert math.isclose(p.total, max(0, 0.3 * p.coverage + 0.125 * p.format + p.tag + 0.25 * p.uniqueness))
    no_u = OPRewardScorer(enc, RewardCfg(use_uniqueness=False)).score(["x"], [GOOD], [REF])[0]
    assert math.isclose(no_u.total, 0.3 * no_u.coverage + 0.1 * no_u.format + no_u.tag)


# ------------------------------------------------------------------ robustness
ANY_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(
        st.sampled_from(["<core perspectives>", "</core perspectives>", "<summary>", "</summary>", "\n", " ",
                         "In the perspective of A, b.", "From the perspective of B,", "x", "漢", "\x00"]),
        max_size=20,
    ).map("".join),
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TEXT, st.text(max_size=60))
def test_any_string_gives_finite_total_in_range(text, situation):
    parts = OPRewardScorer(HashEncoder()).score([keyword_text_for(situation)], [text], [REF])[0]
    assert math.isfinite(parts.total) and 0.0 <= parts.total <= 2.0


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000,
        " " * 100_000,
        "<core perspectives>" + " " * 100_000 + "x",
        "<core perspectives>" + "\n" * 50_000 + "</core perspectives>" + " " * 50_000,
        "<summary>" + " \n" * 50_000,
        ("In the perspective of A, b.\n" * 4000),
        "<core perspectives>" * 5000 + "</summary>" * 5000,
    ],
)
def test_long_and_pathological_inputs(text):
    parts = OPRewardScorer(HashEncoder()).score(["x"], [text], [REF])[0]
    assert 0.0 <= parts.total <= 2.0


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "<core perspectives>",
                "</core perspectives>",
                "<summary>",
                "</summary>",
                " ",
                "\n",
                "\xa0",
                "x",
                "<Core  PERSPECTIVES>",
            ]
        ),
        max_size=10,
    ).map("".join)
)
def test_linear_layout_check_equals_the_authors_regex(text):
    m = LAYOUT_RE.match(text)
    want = (
        (True, m.group("core"), m.group("sum"))
        if m and m.group("core").strip() and m.group("sum").strip()
        else (False, text.strip(), "")
    )
    got = check_layout(text)
    assert (got.valid, got.core, got.summary) == want


@pytest.mark.parametrize("bad", ["", "   ", "no perspective prefix at all", float("nan"), None])
def test_empty_or_malformed_reference_names_the_row(bad):
    scorer = OPRewardScorer(HashEncoder())
    with pytest.raises(MalformedReference, match=r"row 1 \(prompt 'second'\)"):
        scorer.score(["a", "b"], [GOOD, GOOD], [REF, bad], ["first", "second"])


# ------------------------------------------------------------------ TRL contract
def test_trl_reward_function_contract():
    reward = OPReward(OPRewardScorer(HashEncoder()))
    assert reward.__name__ == "op_reward"
    logged = {}
    prompts = [[{"role": "user", "content": "Provide ...: Telling a white lie\n\n"}]] * 2
    completions = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "prose"}]]
    out = reward(
        prompts,
        completions,
        reference=[REF, REF],
        log_metric=lambda k, v: logged.__setitem__(k, v),
        trainer_state=None,
        completion_ids=[[1], [2]],
    )
    assert isinstance(out, list) and all(isinstance(x, float) for x in out) and len(out) == 2
    assert {f"op_reward/{c}" for c in COMPONENTS} <= set(logged)
    assert logged["op_reward/total"] == pytest.approx(sum(out) / 2)
    strings = reward(["p1", "p2"], [GOOD, "prose"], reference=[REF, REF])
    assert strings == [reward.last[0].total, reward.last[1].total]
    with pytest.raises(KeyError, match="reference"):
        reward(["p"], [GOOD])


def test_situation_masking_option():
    enc = HashEncoder()
    reward = OPReward(OPRewardScorer(enc), mask="situation")
    reward(
        ["Provide an analysis: lying"],
        ["In the perspective of Analysis, lying hurts."],
        reference=[REF],
        situation=["lying"],
    )
    encoded = enc.calls[-1]
    assert "In the perspective of Analysis [KW] hurts" in encoded  # 'analysis' (instruction word) not masked
    with pytest.raises(KeyError, match="situation"):
        reward(["p"], [GOOD], reference=[REF])


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_reward_cli_on_released_outputs(tmp_path, opv2_dir, released_dir, minilm_path):
    comps = pd.read_csv(released_dir / "grpo_eval_summaries_clean.csv", keep_default_na=False).iloc[:6]
    comps.loc[5, "answer_p"] = ""  # an empty completion gets a documented score, not a crash
    comps.to_csv(tmp_path / "c.csv", index=False)
    out = tmp_path / "scores.csv"
    cmd = [
        sys.executable,
        "-m",
        "opgrpo_lib.cli",
        "reward",
        "--references",
        str(opv2_dir / "test_5p.csv"),
        "--completions",
        str(tmp_path / "c.csv"),
        "--completion-column",
        "answer_p",
        "--summary-column",
        "answers",
        "--estimator",
        minilm_path,
        "--weights",
        "early",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    df = pd.read_csv(out)
    assert len(df) == 6 and set(COMPONENTS) <= set(df.columns)
    assert (df["w_format"] == 0.125).all() and df["valid_format"].iloc[:5].all()
    assert df["total"].between(0, 2).all() and df.loc[5, "coverage"] == 0
    bad = subprocess.run(cmd[:5] + [str(opv2_dir / "test_10p.csv")] + cmd[6:], capture_output=True, text=True)
    assert bad.returncode == 2 and "no reference with the same prompt" in bad.stderr
    opts = subprocess.run(
        cmd + ["--set", "reward.mask_references=true", "--set", f"reward.agree_with=[{minilm_path}]"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(opts.stdout)["options"] == {
        "mask_references": True,
        "agree_with": [minilm_path],
        "overlong_cache": 0,
    }
    assert set(COMPONENTS) <= set(pd.read_csv(out).columns)
    off = subprocess.run(cmd + ["--set", "train.grpo.beta=0.1"], capture_output=True, text=True)
    assert off.returncode == 2 and "only reward.* settings apply here" in off.stderr
