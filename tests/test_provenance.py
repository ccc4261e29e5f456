"""Provenance keys: which settings and code each step's key covers, and what a change invalidates."""

import json

import pytest

from opgrpo_lib import keys
from opgrpo_lib.config import load_profile
from opgrpo_lib.keys import changes, code_closure, mark, recorded, require_upstream, step_key
from opgrpo_lib.lifecycle import commit_start, prepare_start
from opgrpo_lib.registry import STEPS

ORDER = list(STEPS)


def begin(cfg, root, step):
    """How a long step starts, and its folder made ready (what ``lifecycle.step_run`` does around a body)."""
    start = prepare_start(cfg, root, step)
    if start.state != "finished":
        commit_start(cfg, start)
    return start.state


def _invalidated(override: dict) -> list[str]:
    off = {"train.validation_every": 0}  # the validation curve makes training depend on the evaluator too
    base, new = load_profile("tiny", off), load_profile("tiny", {**off, **override})
    return [s for s in ORDER if STEPS[s].enabled(new) and step_key(base, s) != step_key(new, s)]


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"eval.bootstrap_reps": 500}, ["evaluate", "figures"]),
        ({"generate.max_new_tokens": 8}, ["generate", "styles", "evaluate", "figures"]),
        ({"train.grpo.learning_rate": 2e-3}, ["grpo", "generate", "styles", "evaluate", "figures"]),
        ({"reward.weights": "early"}, ["alignment", "grpo", "generate", "styles", "evaluate", "figures"]),
        ({"estimator.scale": 60.0}, ["estimator", "alignment", "grpo", "generate", "styles", "evaluate", "figures"]),
        ({"train.sft.learning_rate": 1e-3}, ["sft", "alignment", "grpo", "generate", "styles", "evaluate", "figures"]),
        # the curve is off here; tiny translates its own fixture, not evaluation situations
        ({"data.eval_per_split": 4}, [s for s in ORDER if not s.endswith("_validation") and s != "translate"]),
    ],
)
def test_a_change_invalidates_exactly_its_step_and_downstream(override, expected):
    assert _invalidated(override) == expected


def test_validation_curve_settings_are_never_in_the_training_keys():
    """The curve is scored in its own step from GRPO's checkpoints: an evaluator change re-scores, never retrains."""
    on, off = load_profile("tiny"), load_profile("tiny", {"train.validation_every": 0})
    changed = {"models.eval_encoder": "sentence-transformers/all-MiniLM-L6-v2"}
    new = load_profile("tiny", changed)
    assert step_key(new, "grpo") == step_key(on, "grpo") and step_key(new, "sft") == step_key(on, "sft")
    assert step_key(new, "grpo_validation") != step_key(on, "grpo_validation")
    changed_off = load_profile("tiny", {"train.validation_every": 0, **changed})
    assert step_key(changed_off, "grpo") == step_key(off, "grpo") and step_key(changed_off, "sft") == step_key(
        off, "sft"
    )


def test_code_fingerprint_follows_imports():
    assert "train" not in code_closure("figures") and "figures" not in code_closure("train")
    assert {"reward", "text", "config", "train"} <= set(code_closure("steps.grpo"))
    assert "lm" in code_closure("generate")


def test_begin_finished_resume_and_new_run(tmp_path, capsys):
    cfg = load_profile("tiny")
    assert begin(cfg, tmp_path, "sft") == "fresh"
    (tmp_path / "sft" / "checkpoints").mkdir()
    assert begin(cfg, tmp_path, "sft") == "resume"  # same key, not finished
    mark(tmp_path / "sft", cfg, "sft", "finished")
    assert begin(cfg, tmp_path, "sft") == "finished"
    new = load_profile("tiny", {"train.sft.learning_rate": 1e-3})
    assert begin(new, tmp_path, "sft") == "fresh"
    out = capsys.readouterr().out
    assert "train.sft.learning_rate: 0.01 -> 0.001" in out and (tmp_path / "sft.previous" / "checkpoints").exists()
    assert recorded(tmp_path / "sft")["status"] == "running"


def test_upstream_made_with_other_settings_is_refused(tmp_path):
    cfg = load_profile("tiny")
    with pytest.raises(keys.StaleUpstream, match="run notebook 01_data"):
        require_upstream(cfg, tmp_path, "sft")
    (tmp_path / "data").mkdir()
    mark(tmp_path / "data", load_profile("tiny", {"data.max_train_rows": 10}), "data", "finished")
    with pytest.raises(keys.StaleUpstream, match="data.max_train_rows: 10 -> 40"):
        require_upstream(cfg, tmp_path, "sft")
    mark(tmp_path / "data", cfg, "data", "finished")
    assert require_upstream(cfg, tmp_path, "sft") == {"data": step_key(cfg, "data")}


def test_changes_are_readable():
    assert changes({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c: 2 -> 3"]
    assert json.loads(json.dumps(keys.step_inputs(load_profile("tiny"), "grpo")))["upstream"].keys() == {
        "data",
        "estimator",
        "sft",
    }
    assert set(STEPS) == set(ORDER)


def test_finished_keeps_the_key_the_step_started_with(tmp_path):
    a, b = load_profile("tiny"), load_profile("tiny", {"train.sft.learning_rate": 1e-3})
    (tmp_path / "sft").mkdir()
    mark(tmp_path / "sft", a, "sft", "running")
    assert mark(tmp_path / "sft", b, "sft", "finished")["key"] == step_key(a, "sft")
