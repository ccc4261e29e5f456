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


def test_bad_weights_name():
    cfg = load_profile("tiny", {"reward.weights": "late"})
    with pytest.raises(ConfigError, match="reward.weights"):
        weight_pair(cfg.reward)
