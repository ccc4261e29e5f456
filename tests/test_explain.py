"""The reward explainer (opgrpo_lib/explain.py, `opgrpo explain`, notebook 00): its numbers are the scorer's."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reference_reward as ref

from opgrpo_lib import cli, explain, pipeline
from opgrpo_lib.config import RewardCfg, load_profile
from opgrpo_lib.reward import COMPONENTS, OPRewardScorer, format_parts, greedy_pairs, keyword_text_for, redundant_pairs

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_explore_reward.ipynb"
REF = "In the perspective of Honesty, Telling the truth matters.\nIn the perspective of Kindness, Sparing feelings helps."
SITUATION = "Telling a white lie"
# S1 and S2 say the same (truth), S3 is about something else (law): 1 match, 1 redundant pair
RESPONSE = (
    "<core perspectives>\nIn the perspective of Honesty, the truth counts.\nIn the perspective of Candour, truth "
    "again.\nIn the perspective of Law, the law decides.\n</core perspectives>\n\n<summary>\nHonesty and law.\n</summary>"
)
FIELDS = [*COMPONENTS, "coverage_rate", "uniqueness_rate", "matched", "n_references", "n_candidates", "valid_format"]


class TopicEncoder:
    """Unit vectors over a few topic words (+ a small constant): same topic -> cosine ~1, different -> ~0."""

    TOPICS = ("truth", "feel", "law")

    def encode(self, sentences):
        rows = [[float(t in s.lower()) for t in self.TOPICS] + [0.1] for s in sentences]
        v = np.asarray(rows, dtype=np.float32).reshape(len(sentences), len(self.TOPICS) + 1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def one(response=RESPONSE, **kw):
    return explain.explain(explain.Situation(SITUATION, REF), response, encoder=TopicEncoder(), **kw)


# ------------------------------------------------------------------ the explanation is the scorer's
def test_matches_redundant_pairs_and_terms():
    e = one()
    s, p = e.score, e.score.parts
    assert s.matches == ((0, 0),) and p.matched == 1  # R1 (truth) <-> S1; S2 may not match twice; R2 (feel) unmatched
    assert s.redundant == ((0, 1),) and p.uniqueness_rate == pytest.approx(2 / 3) and p.uniqueness == 0.4
    assert p.coverage_rate == 0.5 and p.coverage == 3 and p.valid_format and p.tag == 0.0
    assert s.response.masked[0] == "In the perspective of Honesty the truth counts"
    f = s.response.format
    assert f.names == ("honesty", "candour", "law") and f.missing_from_summary == ("candour",)
    assert f.echo_penalty == -0.5 and f.layout_points == 2.0 and f.score == 1.5
    t = e.terms
    assert p.total == max(0.0, t["coverage"] + t["format"] + t["tag"] + t["uniqueness"])
    assert t == {"coverage": 0.3 * 3, "format": 0.1 * 1.5, "tag": 0.0, "uniqueness": 0.3 * 0.4}
    batched = OPRewardScorer(TopicEncoder()).score([keyword_text_for(SITUATION)], [RESPONSE], [REF])[0]
    assert p == batched


def test_to_dict_is_json_and_to_text_names_every_part():
    e = one()
    d = json.loads(json.dumps(e.to_dict()))
    assert d["components"] == e.score.parts.as_dict() and d["total"] == e.total
    assert d["coverage"]["matches"] == [{"reference": 0, "segment": 0, "cosine": pytest.approx(1.0)}]
    assert (
        d["uniqueness"]["redundant_pairs"][0]["kept"] == 0 and d["uniqueness"]["redundant_pairs"][0]["redundant"] == 1
    )
    assert d["format"]["missing_from_summary"] == ["candour"] and len(d["similarity"]) == 2
    assert [r["name"] for r in d["references"]] == ["Honesty", "Kindness"]
    text = e.to_text()
    for needle in ("R1<->S1", "S2 repeats S1", "ladder 3", "candour", "total ="):
        assert needle in text, needle


def test_ablation_and_weights_flow_through():
    e = one(cfg=RewardCfg(use_uniqueness=False, weights="early"))
    assert e.terms["uniqueness"] == 0.0 and e.terms["format"] == 0.125 * e.score.parts.format
    assert e.to_dict()["weights"] == {"coverage": 0.3, "format": 0.125, "uniqueness": 0.0}


def test_empty_response_scores_the_uniqueness_term_minus_the_tag_penalty():
    """The authors' formula: no segments count as fully unique (rate 1, ladder 1), so an empty response gets w_u - 0.2
    (0.3 - 0.2 = 0.1 with the final weights), as the per-rollout reference implementation does."""
    e = one("")
    assert e.terms == {"coverage": 0.0, "format": 0.0, "tag": -0.2, "uniqueness": 0.3}
    assert e.total == pytest.approx(0.1) and e.score.parts.uniqueness_rate == 1.0
    assert e.total == ref.score_one(TopicEncoder().encode, set(), keyword_text_for(SITUATION), "", REF)["total"]
    assert "total = max(0, uniqueness term 0.3 + tag term -0.2) = 0.1" in e.to_text()
    assert one("", cfg=RewardCfg(weights="early")).total == pytest.approx(0.05)
    assert one("", cfg=RewardCfg(use_uniqueness=False)).total == 0.0


def test_format_parts_equal_reference_implementation():
    texts = [RESPONSE, "", "plain prose", RESPONSE.replace("Law", "Honesty"), RESPONSE.replace("<summary>", "")]
    for text in texts:
        f = format_parts(text)
        assert f.score == ref.fmt_score(text)
        assert f.score == max(f.layout_points - f.repeat_penalty + f.echo_penalty, 0.0)


def test_pairs_helpers():
    sim = np.eye(3)
    sim[0, 1] = sim[1, 0] = 0.8
    sim[1, 2] = sim[2, 1] = 0.9  # 2 duplicates only 1, which is already redundant: no pair (1, 2)
    assert redundant_pairs(sim, 0.78) == [(0, 1)]
    assert greedy_pairs(np.array([[0.9, 0.85], [0.8, 0.5]]), 0.7) == [(0, 0)]
    assert greedy_pairs(np.zeros((2, 0)), 0.7) == []


@pytest.mark.parametrize(
    "text",
    ["", "no tags, In the perspective of nothing", "x" * 100_000, "In the perspective of A, the truth.\n" * 3000],
    ids=["empty", "no-tags", "100k-x", "3000-lines"],
)
def test_malformed_responses_explain_and_plot(text, tmp_path):
    e = one(text)
    assert e.total == OPRewardScorer(TopicEncoder()).score([keyword_text_for(SITUATION)], [text], [REF])[0].total
    assert len(e.to_text()) < 20_000  # long lists are cut
    path = explain.save_figure(explain.figure(e), tmp_path / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_plots(tmp_path):
    a, b = one(), one("In the perspective of Feelings, spare their feelings.")
    fig = explain.plot_similarity(a)
    assert fig.axes and "1/2 matched" in fig.axes[0].get_title()
    assert explain.plot_terms(b).axes
    written = explain.save([a, b], tmp_path / "out")
    assert all(p.exists() for p in written.values())
    assert len(json.loads(written["json"].read_text())) == 2
    assert len(explain.plot_comparison([a, b]).subfigs) == 2


def test_explorer_is_not_a_pipeline_step_and_papermill_sees_its_parameters():
    import papermill as pm

    assert NOTEBOOK.exists()
    assert NOTEBOOK not in pipeline.notebooks() and all(not p.name.startswith("00") for p in pipeline.notebooks())
    names = {"profile", "run_dir", "overrides", "situation", "responses", "encoder", "interactive"}
    assert set(pm.inspect_notebook(str(NOTEBOOK))) == names


# ------------------------------------------------------------------ situations, released outputs
def test_load_situation_forms(opv2_dir):
    cfg = load_profile("tiny")
    five = pd.read_csv(opv2_dir / "test_5p.csv", keep_default_na=False)
    six = pd.read_csv(opv2_dir / "test_6p.csv", keep_default_na=False)
    s = explain.load_situation(cfg, "5p:3")
    assert (s.prompt, s.reference, s.key) == (five.prompt[3], five.answer[3], "5p:3")
    assert explain.load_situation(cfg, 300).key == "6p:0" == explain.load_situation(cfg, six.prompt[0]).key
    assert explain.load_situation(cfg, "my own situation", reference=REF).reference == REF
    with pytest.raises(ValueError, match="not an OP-V2 test situation"):
        explain.load_situation(cfg, "no such situation")
    with pytest.raises(ValueError, match="no parsed row"):
        explain.load_situation(cfg, "5p:300")


def test_released_responses(opv2_dir, released_dir, tmp_path, monkeypatch):
    cfg = load_profile("tiny")
    sit = explain.load_situation(cfg, "5p:0")
    out = pd.read_csv(released_dir / "grpo_eval_summaries_clean.csv", keep_default_na=False)
    (label, text), (_, other), (_, own) = explain.resolve_responses(cfg, sit, ["released", "released:5p:1", "mine"])
    assert text == explain.two_block(out.answer_p[0], out.answers[0]) and label == explain.RELEASED_LABEL
    assert other == explain.two_block(out.answer_p[1], out.answers[1]) and own == "mine"
    with pytest.raises(ValueError, match="test_5p and test_10p only"):
        explain.released_response(cfg, explain.load_situation(cfg, "6p:0"))
    (tmp_path / "grpo_eval_summaries_clean.csv").write_text("prompt,answer_p,answers,ok\nx,y,z,1\n")
    monkeypatch.setenv(explain.ENV_RELEASED_DIR, str(tmp_path))
    with pytest.raises(Exception, match="sha256"):
        explain.released_response(cfg, sit)


# ------------------------------------------------------------------ widgets
def test_widgets_only_with_a_front_end(monkeypatch, capsys):
    pytest.importorskip("ipywidgets")
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert explain.widgets_enabled()[0] is False  # papermill, plain kernels, pytest
    assert explain.widgets_enabled(True)[0] is True
    monkeypatch.setenv("JPY_SESSION_NAME", "/x/00_explore_reward.ipynb")
    assert explain.widgets_enabled()[0] is True
    assert explain.explorer(load_profile("tiny"), enabled=False) is None
    assert "interactive explorer off" in capsys.readouterr().out


def test_explorer_updates(opv2_dir, released_dir):
    pytest.importorskip("ipywidgets")
    cfg = load_profile("tiny")
    box = explain.build_explorer(cfg, explain.load_situation(cfg, "5p:0"), ["released"], encoder=TopicEncoder())
    w = box.explorer
    assert "A: total" in w["status"].value and "R1" in w["report"].value and w["image"].value[:4] == b"\x89PNG"
    w["row"].value = 2  # another situation: its released output is loaded into A and explained
    out = pd.read_csv(released_dir / "grpo_eval_summaries_clean.csv", keep_default_na=False)
    assert w["state"]["situation"].key == "5p:2" and w["a"].value == explain.two_block(out.answer_p[2], out.answers[2])
    w["b"].value = "In the perspective of Law, the law decides."
    w["run"].click()
    assert "B: total" in w["status"].value
    w["split"].value = "6p"  # no released outputs for 6p: A is kept, the load button is off
    assert w["load"].disabled and w["state"]["situation"].split == "6p"


def test_explorer_stays_consistent(opv2_dir, released_dir):
    """A bad row puts the box back on the situation shown (with a message); B's default text, written for one
    situation, is dropped when the situation changes; labels fit; figure and total come from the same computation."""
    pytest.importorskip("ipywidgets")
    cfg = load_profile("tiny")
    plain = "Drinking is a personal decision."
    box = explain.build_explorer(cfg, explain.load_situation(cfg, "5p:0"), ["released", plain], encoder=TopicEncoder())
    w = box.explorer
    assert "B: total" in w["status"].value and w["b"].value == plain and not w["run"].disabled
    image, status = w["image"].value, w["status"].value
    w["row"].value = 9999  # no such row: view and box stay on 5p:0, a message says why
    assert w["row"].value == 0 and w["state"]["situation"].key == "5p:0" and "no parsed row 9999" in w["note"].value
    assert w["image"].value == image and w["status"].value == status
    w["row"].value = 1
    assert w["state"]["situation"].key == "5p:1" and w["b"].value == "" and "B cleared" in w["note"].value
    assert "B: total" not in w["status"].value and w["run"].description == "Explain"
    w["b"].value = "In the perspective of Law, the law decides."  # the user's own B is kept across situations
    w["row"].value = 2
    assert w["b"].value.startswith("In the perspective of Law") and "B: total" in w["status"].value
    assert w["load"].layout.width == "auto" and w["split"].style.description_width == "initial"


# ------------------------------------------------------------------ equal to `opgrpo reward` (MiniLM)
def _reward_cli(tmp_path, prompt, texts, minilm_path, opv2_dir, name="scores.csv"):
    comps = tmp_path / f"{name}.in.csv"
    pd.DataFrame({"prompt": [prompt] * len(texts), "completion": texts}).to_csv(comps, index=False)
    out = tmp_path / name
    argv = [
        "reward",
        "--references",
        str(opv2_dir / "test_5p.csv"),
        "--completions",
        str(comps),
        "--completion-column",
        "completion",
        "--estimator",
        minilm_path,
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    return pd.read_csv(out, keep_default_na=False)


def _same(expl: dict, row: pd.Series) -> None:
    for k in FIELDS:
        want = row[k]
        want = bool(want) if k == "valid_format" else want
        assert expl["components"][k] == pytest.approx(want, abs=1e-12), (k, expl["components"][k], want)
    assert expl["total"] == pytest.approx(row["total"], abs=1e-12)


@pytest.mark.slow
def test_cli_explain_equals_cli_reward(tmp_path, capsys, opv2_dir, released_dir, minilm_path):
    out = pd.read_csv(released_dir / "grpo_eval_summaries_clean.csv", keep_default_na=False)
    core = out.answer_p[0]
    cases = {  # situation 5p:0 for all: three released outputs (two of other situations), then malformed ones
        "released-0": explain.two_block(out.answer_p[0], out.answers[0]),
        "released-1": explain.two_block(out.answer_p[1], out.answers[1]),
        "released-2": explain.two_block(out.answer_p[2], out.answers[2]),
        "no-tags": core + "\n\n" + out.answers[0],
        "empty": "",
        "huge": ((core + "\n") * (100_000 // len(core) + 1))[:100_000],
    }
    scores = _reward_cli(tmp_path, out.prompt[0], list(cases.values()), minilm_path, opv2_dir)
    capsys.readouterr()  # the reward command's summary line
    assert not scores["valid_format"][3:].any() and scores["valid_format"][:3].all()
    for i, (name, text) in enumerate(cases.items()):
        f = tmp_path / f"{name}.txt"
        f.write_text(text, encoding="utf-8")
        argv = ["explain", "--situation", "5p:0", "--response-file", str(f), "--encoder", minilm_path, "--json"]
        assert cli.main(argv) == 0
        _same(json.loads(capsys.readouterr().out), scores.iloc[i])
    fig = tmp_path / "both.png"
    argv = [
        "explain",
        "--situation",
        "5p:0",
        "--response-file",
        str(tmp_path / "released-0.txt"),
        "--response-file2",
        str(tmp_path / "no-tags.txt"),
        "--encoder",
        minilm_path,
        "--figure",
        str(fig),
    ]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "released-0.txt" in text and "no-tags.txt" in text and "total = " in text and fig.stat().st_size > 0


@pytest.mark.slow
def test_notebook_runs_under_papermill_and_equals_cli_reward(tmp_path, opv2_dir, released_dir, minilm_path):
    import papermill as pm

    run = tmp_path / "run"
    params = {
        "profile": "tiny",
        "run_dir": str(run),
        "situation": "5p:1",
        "responses": ["released", "released:5p:2"],
        "encoder": minilm_path,
        "interactive": False,
    }
    pm.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "00.ipynb"),
        parameters=params,
        kernel_name="python3",
        progress_bar=False,
        cwd=str(NOTEBOOK.parent),
    )
    assert (run / "explain" / "explanation.png").stat().st_size > 0
    assert (run / "explain" / "explanation.txt").exists()
    exps = json.loads((run / "explain" / "explanation.json").read_text())
    assert len(exps) == 2 and exps[0]["label"] == explain.RELEASED_LABEL
    prompt = pd.read_csv(opv2_dir / "test_5p.csv", keep_default_na=False).prompt[1]
    scores = _reward_cli(tmp_path, prompt, [e["response"] for e in exps], minilm_path, opv2_dir)
    for e, (_, row) in zip(exps, scores.iterrows()):
        _same(e, row)
    assert exps[0]["total"] > exps[1]["total"], "the situation's own released output covers more than another's"


def test_binder_opens_the_explorer():
    root = NOTEBOOK.parents[1]
    assert "labpath=notebooks%2F00_explore_reward.ipynb)" in (root / "README.md").read_text()
    assert '/lab/tree/notebooks/00_explore_reward.ipynb"' in (root / "binder" / "postBuild").read_text()
    assert "ipywidgets" in (root / "pyproject.toml").read_text()


def test_explain_shows_the_reward_options_in_effect(tiny_encoder_path):
    """``opgrpo explain --set reward.…`` and the explorer (the profile's ``reward``) score with the named options
    and say which are on; the authors' reward says nothing extra."""
    from opgrpo_lib import explain
    from opgrpo_lib.config import load_profile

    situation = explain.Situation("Telling a white lie", "In the perspective of Honesty, Truth matters.")
    cfg = load_profile("tiny", {"reward.mask_references": True, "reward.agree_with": [str(tiny_encoder_path)]})
    (on,) = explain.explain_many(
        situation, ["In the perspective of Honesty, lies hurt."], encoder=str(tiny_encoder_path), cfg=cfg
    )
    (off,) = explain.explain_many(
        situation,
        ["In the perspective of Honesty, lies hurt."],
        encoder=str(tiny_encoder_path),
        cfg=load_profile("tiny"),
    )
    assert "reward.mask_references" in on.to_text() and "reward.agree_with" in on.to_text()
    assert "reward options" not in off.to_text()
