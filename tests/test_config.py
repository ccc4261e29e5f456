import pytest

from opgrpo_lib.config import ConfigError, available_profiles, load_profile, weight_pair


def test_profiles_exist_and_load():
    assert {"tiny", "cpu", "paper"} <= set(available_profiles())
    for name in ("tiny", "cpu", "paper"):
        cfg = load_profile(name)
        assert cfg.profile == name
        assert len(cfg.config_hash) == 16


def test_paper_profile_is_faithful():
    cfg = load_profile("paper")
    assert cfg.models.policy == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.models.encoder == "sentence-transformers/paraphrase-mpnet-base-v2"
    assert cfg.models.nli == "microsoft/deberta-v2-xlarge-mnli"
    assert (cfg.reward.coverage_threshold, cfg.reward.uniqueness_threshold) == (0.70, 0.78)
    assert weight_pair(cfg.reward) == (0.1, 0.3)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"data\.eval_per_splitt"):
        load_profile("tiny", {"data.eval_per_splitt": 3})
    with pytest.raises(ConfigError, match="bogus"):
        load_profile("tiny", {"bogus": 1})


def test_type_errors_are_named():
    with pytest.raises(ConfigError, match=r"reward\.coverage_threshold"):
        load_profile("tiny", {"reward": {"coverage_threshold": "high"}})
    with pytest.raises(ConfigError, match=r"seed"):
        load_profile("tiny", {"seed": True})


def test_overrides_deep_merge_and_hash():
    base = load_profile("cpu")
    nested = load_profile("cpu", {"data": {"eval_per_split": 50}})
    dotted = load_profile("cpu", {"data.eval_per_split": 50})
    assert nested == dotted
    assert nested.data.eval_keep_all == base.data.eval_keep_all == ["gt10p"]  # sibling keys survive the merge
    assert nested.data.eval_per_split == 50
    assert nested.config_hash == dotted.config_hash != base.config_hash
    assert load_profile("cpu").config_hash == base.config_hash  # stable


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("nope")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("device", "gpu", "device: 'gpu' is not one of"),
        ("reward.weights", "late", "reward.weights: expected 'final'"),
        ("reward.weights", "nan,inf", "finite"),
        ("reward.weights", "-1,0.3", ">= 0"),
        ("reward.mask", "situaton", "reward.mask: 'situaton' is not one of \\['prompt', 'situation', 'none'\\]"),
        ("reward.coverage_threshold", 1.5, "outside the allowed range"),
        ("reward.coverage_threshold", float("nan"), "not a finite number"),
        ("train.backend", "hff", "train.backend: 'hff' is not one of"),
        ("generate.rows_per_split", -3, "generate.rows_per_split: -3 is outside"),
        (
            "generate.systems",
            [{"name": "m", "policy": "policy", "kind": "modplurall"}],
            "generate.systems\\[0\\].kind",
        ),
        (
            "generate.systems",
            [{"name": "m", "policy": "policy", "prompt": "implicitt"}],
            "generate.systems\\[0\\].prompt",
        ),
        ("generate.splits", ["5p", "11p"], "generate.splits\\[1\\]: '11p'"),
        ("eval.sbert_thresholds", [0.7, -0.5], "eval.sbert_thresholds: -0.5 is outside"),
        ("eval.reference_system", "nobody", "eval.reference_system"),
        ("estimator.judge", "gpt", "estimator.judge"),
        ("train.init", "run:sftt", "train.init"),
    ],
)
def test_bad_choice_values_fail_at_load(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("tiny", {key: value})


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndata: {eval_per_split: [\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+"):
        load_profile(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("seed: 1\ndevice: cpu\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: line 3: key 'seed' is given twice"):
        load_profile(dup)


def test_weight_pair_of_explicit_weights():
    assert weight_pair(load_profile("tiny", {"reward.weights": "0.2,0.1"}).reward) == (0.2, 0.1)


def test_yaml_float_without_dot_in_trainer_keys_is_caught():
    with pytest.raises(ConfigError, match="train.sft.learning_rate: '1e-4' is a string in YAML"):
        load_profile("tiny", {"train.sft.learning_rate": "1e-4"})
    from opgrpo_lib.cli import _overrides

    assert _overrides(["train.sft.learning_rate=1e-4", "seed=3", "device=cpu"]) == {
        "train.sft.learning_rate": 1e-4,
        "seed": 3,
        "device": "cpu",
    }
