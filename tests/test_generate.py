import json

import pytest

from opgrpo_lib.config import GenerateCfg, load_profile
from opgrpo_lib.generate import generate_rows
from opgrpo_lib.lm import resolve_policy
from opgrpo_lib.prompts import render
from opgrpo_lib.runs import run_paths

VALID = "<core perspectives>\nIn the perspective of A, b.\n</core perspectives>\n<summary>\nA.\n</summary>"


def test_resume_skips_finished_rows_and_repairs_a_cut_line(tmp_path):
    calls = []

    def fn(situations, attempt):
        calls.append(list(situations))
        return [f"out {s}" for s in situations]

    out = tmp_path / "g.jsonl"
    gen = GenerateCfg(batch_size=2)
    first = generate_rows(fn, [("a", "5p"), ("b", "5p"), ("c", "6p")], "sys", "default", gen, out, "k", progress=False)
    assert first["text"].tolist() == ["out a", "out b", "out c"] and calls == [["a", "b"], ["c"]]
    assert first["split"].tolist() == ["5p", "5p", "6p"]
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + '\n{"prompt": "c", "te')  # a crash cut the last line
    calls.clear()
    items = [("a", "5p"), ("b", "5p"), ("c", "6p"), ("d", "6p")]
    again = generate_rows(fn, items, "sys", "default", gen, out, "k", progress=False)
    assert calls == [["c", "d"]] and again["prompt"].tolist() == ["a", "b", "c", "d"]


def test_rows_made_under_another_fingerprint_are_regenerated(tmp_path):
    """Changed settings or a retrained policy (another key) never reuse old rows; the file keeps only new ones."""
    out, gen = tmp_path / "g.jsonl", GenerateCfg(batch_size=4)
    items = [("a", "5p"), ("b", "5p")]
    generate_rows(lambda sits, attempt: ["old"] * len(sits), items, "s", "default", gen, out, "key1", False)
    calls = []

    def fn(sits, attempt):
        calls.append(list(sits))
        return ["new"] * len(sits)

    df = generate_rows(fn, items, "s", "default", gen, out, "key2", False)
    assert calls == [["a", "b"]] and df["text"].tolist() == ["new", "new"]
    assert {json.loads(line)["fingerprint"] for line in out.read_text().splitlines()} == {"key2"}


def test_retries_resample_invalid_layouts_only(tmp_path):
    attempts = {}

    def fn(situations, attempt):
        texts = []
        for s in situations:
            attempts[s] = attempts.get(s, 0) + 1
            texts.append(VALID if (s == "ok" or attempts[s] >= 3) else "no layout")
        return texts

    items = [("ok", "5p"), ("late", "5p")]
    df = generate_rows(fn, items, "s", "default", GenerateCfg(retries=3), tmp_path / "x.jsonl", "k", False)
    assert df["attempts"].tolist() == [1, 3] and df["valid_format"].all()
    assert df.loc[0, "core"] == "In the perspective of A, b." and df.loc[0, "summary"] == "A."
    off = generate_rows(
        fn, [("never", "5p")], "s", "default", GenerateCfg(retries=0), tmp_path / "y.jsonl", "k", False
    )
    assert off["attempts"].tolist() == [1] and not off["valid_format"].any()
    assert off.loc[0, "core"] == "no layout"  # invalid layout: the whole text is the core text
    rec = json.loads((tmp_path / "y.jsonl").read_text().splitlines()[0])
    assert rec["valid_format"] is False


def test_prompt_templates():
    assert (
        render("implicit", "X") == "Provide a structured comprehensive analysis and your opinions on this topic: X\n\n"
    )
    assert render("explicit", "X").startswith(
        "Provide a structured multi-perspectives analysis within 450 words on this topic: X\n"
    )
    assert "<core perspectives>" in render("summary_format", "X") and "{Perspective name}" in render(
        "summary_format", "X"
    )
    assert render("Thoughts on {situation}?", "X") == "Thoughts on X?"
    with pytest.raises(ValueError, match="situation"):
        render("no placeholder", "X")


def test_missing_trained_policy_names_the_notebook(tmp_path):
    cfg = load_profile("tiny")
    with pytest.raises(FileNotFoundError, match="04_grpo"):
        resolve_policy("run:grpo", cfg, run_paths(cfg, tmp_path).root)


@pytest.mark.slow
def test_generate_and_evaluate_on_tiny(tmp_path, opv2_dir, monkeypatch):
    from opgrpo_lib.steps import data, evaluate, generate

    monkeypatch.setenv("OPGRPO_DATA_DIR", str(opv2_dir))
    untrained = [
        s for s in load_profile("tiny").to_dict()["generate"]["systems"] if not s["policy"].startswith("run:")
    ]
    # the trained systems and checkpoint coverage are covered by test_pipeline
    untrained_only = {
        "generate.systems": untrained,
        "eval.reference_system": "base_implicit",
        "eval.estimator_coverage": False,
        "styles.styles": [],  # the prompt-style test needs the trained systems (test_pipeline, test_styles)
    }
    cfg = load_profile("tiny", {**untrained_only, "eval.checkpoint_rows_per_split": 0})
    paths = run_paths(cfg, tmp_path / "run")
    data.run(cfg, paths)
    out = generate.run(cfg, paths, progress=False)
    assert set(out["system"]) == {"base_implicit", "base_explicit", "modplural"}
    assert out.groupby(["system", "split"]).size().unstack()[["5p", "gt10p"]].eq([3, 2]).all().all()  # split_rows
    res = evaluate.run(cfg, paths, progress=False)
    m = res["metrics"]
    assert {"sbert", "nli", "tokens"} <= set(m["metric"])
    sb = m[m.metric == "sbert"]
    assert sb["n"].sum() > 0 and sb["relative_accuracy"].dropna().between(0, 1).all()
    assert (paths.results / "eval" / "sbert_per_sample.parquet").exists()
    assert (paths.results / "generations" / "base_implicit.jsonl").exists()
    assert res["summary"]["retries"] == 1 and res["summary"]["nli"] == "ran with tiny:nli"
    off = {"models.nli": None, **untrained_only, "eval.checkpoint_rows_per_split": 0}
    nli_off = evaluate.run(load_profile("tiny", off), paths, progress=False)
    assert nli_off["summary"]["nli"].startswith("skipped") and "nli" not in set(nli_off["metrics"]["metric"])
    assert not (paths.results / "eval" / "nli_per_sample.parquet").exists(), "no old NLI scores once it is off"


def test_sampling_is_per_row_independent_of_batch_and_reproducible():
    """A row's sample depends on (seed, its text, attempt) only: alone, in a batch, in another order, rerun."""
    from opgrpo_lib import lm
    from opgrpo_lib.models import resolve

    model = lm.load(resolve("tiny:causal-lm"))
    msgs = ["In the perspective of care, people", "A longer situation about honesty, duty and many other things", "x"]
    seeds = [lm.row_seed(0, m) for m in msgs]
    batch = lm.sample(model, msgs, 16, 1.0, 0.9, seeds=seeds)
    alone = [lm.sample(model, [m], 16, 1.0, 0.9, seeds=[s])[0] for m, s in zip(msgs, seeds)]
    reordered = lm.sample(model, msgs[::-1], 16, 1.0, 0.9, seeds=seeds[::-1])[::-1]
    assert batch == alone == reordered == lm.sample(model, msgs, 16, 1.0, 0.9, seeds=seeds)
    other = lm.sample(model, msgs, 16, 1.0, 0.9, seeds=[lm.row_seed(1, m) for m in msgs])
    assert other != batch, "another seed gives another sample"


@pytest.mark.parametrize(
    "temperature, top_p, top_k", [(0.7, 0.9, 512), (0.7, 0.9, 2), (1.0, 1.0, 512), (0.0, 1.0, 512)]
)
def test_compact_sampler_gives_lm_sample_texts(monkeypatch, temperature, top_p, top_k):
    """Step 05's decoding loop (ended rows leave the batch and the KV cache; the nucleus from the top-k scores, the
    whole row sorted when the nucleus is wider) gives exactly ``lm.sample``'s texts. A token the rows reach at
    different steps is made a stop token, so rows leave the batch one by one."""
    from opgrpo_lib import generate, lm
    from opgrpo_lib.models import resolve

    model = lm.load(resolve("tiny:causal-lm"))
    msgs = [
        "In the perspective of care, people",
        "A longer situation about honesty, duty and many other things",
        "x",
        "Lying to protect a friend",
        "Eating meat",
    ]
    seeds = [lm.row_seed(0, m) for m in msgs]
    free = lm.sample(model, msgs, 24, temperature, top_p, seeds=seeds)
    ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in free]

    def ends(t):  # the step at which each row would stop on token t
        return {row.index(t) if t in row else len(row) for row in ids}

    common = max(set(sum(ids, [])), key=lambda t: len(ends(t)))
    monkeypatch.setattr(model.model.generation_config, "eos_token_id", [model.tokenizer.eos_token_id, common])
    monkeypatch.setattr(generate, "NUCLEUS_TOP_K", top_k)
    ref = lm.sample(model, msgs, 24, temperature, top_p, seeds=seeds)
    if temperature > 0:  # (the untrained tiny LM's greedy rows are all alike)
        assert len(ends(common)) > 1 and len(set(ref)) > 1, "rows should end at different steps"
    assert generate.sample_compact(model, msgs, 24, temperature, top_p, seeds) == ref


def test_split_rows_override_rows_per_split():
    import pandas as pd

    from opgrpo_lib.generate import eval_items

    ev = pd.DataFrame(
        {"prompt": [f"{s}-{i}" for s in ("5p", "6p") for i in range(5)], "split": ["5p"] * 5 + ["6p"] * 5}
    )
    items = eval_items(ev, GenerateCfg(rows_per_split=2, split_rows={"5p": 4}, splits=["5p", "6p"]))
    assert [p for p, _ in items] == ["5p-0", "5p-1", "5p-2", "5p-3", "6p-0", "6p-1"]
