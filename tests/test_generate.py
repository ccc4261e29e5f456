import json

import pytest

from opgrpo_lib.config import GenerateCfg, load_profile
from opgrpo_lib.generate import generate_rows, resolve_policy
from opgrpo_lib.prompts import render
from opgrpo_lib.runs import run_paths

VALID = "<core perspectives>\nIn the perspective of A, b.\n</core perspectives>\n<summary>\nA.\n</summary>"


def test_resume_skips_finished_rows_and_repairs_a_cut_line(tmp_path):
    calls = []

    def fn(situations, seed):
        calls.append(list(situations))
        return [f"out {s}" for s in situations]

    out = tmp_path / "g.jsonl"
    gen = GenerateCfg(batch_size=2)
    first = generate_rows(fn, [("a", "5p"), ("b", "5p"), ("c", "6p")], "sys", "default", gen, out, 0, progress=False)
    assert first["text"].tolist() == ["out a", "out b", "out c"] and calls == [["a", "b"], ["c"]]
    assert first["split"].tolist() == ["5p", "5p", "6p"]
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + '\n{"prompt": "c", "te')  # a crash cut the last line
    calls.clear()
    items = [("a", "5p"), ("b", "5p"), ("c", "6p"), ("d", "6p")]
    again = generate_rows(fn, items, "sys", "default", gen, out, 0, progress=False)
    assert calls == [["c", "d"]] and again["prompt"].tolist() == ["a", "b", "c", "d"]


def test_retries_resample_invalid_layouts_only(tmp_path):
    attempts = {}

    def fn(situations, seed):
        texts = []
        for s in situations:
            attempts[s] = attempts.get(s, 0) + 1
            texts.append(VALID if (s == "ok" or attempts[s] >= 3) else "no layout")
        return texts

    items = [("ok", "5p"), ("late", "5p")]
    df = generate_rows(fn, items, "s", "default", GenerateCfg(retries=3), tmp_path / "x.jsonl", 0, False)
    assert df["attempts"].tolist() == [1, 3] and df["valid_format"].all()
    assert df.loc[0, "core"] == "In the perspective of A, b." and df.loc[0, "summary"] == "A."
    off = generate_rows(fn, [("never", "5p")], "s", "default", GenerateCfg(retries=0), tmp_path / "y.jsonl", 0, False)
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
    with pytest.raises(FileNotFoundError, match="04_op_grpo"):
        resolve_policy("run:grpo", cfg, run_paths(cfg, tmp_path))


@pytest.mark.slow
def test_generate_and_evaluate_on_tiny(tmp_path, opv2_dir, monkeypatch):
    from opgrpo_lib import data, evaluate, generate

    monkeypatch.setenv("OPGRPO_DATA_DIR", str(opv2_dir))
    untrained = [
        s for s in load_profile("tiny").to_dict()["generate"]["systems"] if not s["policy"].startswith("run:")
    ]
    # the trained systems and checkpoint coverage are covered by test_pipeline
    cfg = load_profile("tiny", {"generate.systems": untrained, "eval.checkpoint_rows_per_split": 0})
    paths = run_paths(cfg, tmp_path / "run", tmp_path / "results")
    data.run(cfg, paths)
    out = generate.run(cfg, paths, progress=False)
    assert set(out["system"]) == {"base_implicit", "base_explicit", "modplural", "base_implicit@plain"}
    assert (out.groupby(["system", "split"]).size() == 2).all()
    res = evaluate.run(cfg, paths, progress=False)
    m = res["metrics"]
    assert {"sbert", "nli", "tokens"} <= set(m["metric"])
    sb = m[m.metric == "sbert"]
    assert sb["n"].sum() > 0 and sb["relative_accuracy"].dropna().between(0, 1).all()
    assert (tmp_path / "results" / "eval" / "sbert_per_sample.parquet").exists()
    assert res["summary"]["retries"] == 1 and res["summary"]["nli"] == "ran with tiny:nli"
    off = {"models.nli": None, "generate.systems": untrained, "eval.checkpoint_rows_per_split": 0}
    nli_off = evaluate.run(load_profile("tiny", off), paths, progress=False)
    assert nli_off["summary"]["nli"].startswith("skipped") and "nli" not in set(nli_off["metrics"]["metric"])
