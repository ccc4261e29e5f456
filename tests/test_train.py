import json
import os
import subprocess
import sys

import pytest

from opgrpo_lib.config import ConfigError, load_profile
from opgrpo_lib.text import check_layout, parse_perspectives
from opgrpo_lib.train import (
    capitalise_sentences,
    grpo_config,
    offline_summary,
    sft_target,
    summary_prompt,
    validate_trainer_keys,
)

PERSP = [
    {"name": "Honesty", "explanation": "Truth matters. It builds trust."},
    {"name": "Care", "explanation": "Feelings count!"},
]


def test_trainer_keys_are_validated_against_installed_trl(tmp_path):
    from trl import GRPOConfig

    with pytest.raises(ConfigError, match=r"train\.grpo\.max_prompt_length is not a field of trl\.GRPOConfig"):
        validate_trainer_keys("grpo", {"max_prompt_length": 512}, GRPOConfig)
    cfg = load_profile("tiny", {"train.grpo.kl_coef": 0.1})
    with pytest.raises(ConfigError, match="kl_coef"):
        grpo_config(cfg, tmp_path)


@pytest.mark.parametrize("profile", ["tiny", "cpu", "paper"])
def test_every_profile_passes_trl_validation(profile):
    from trl import GRPOConfig, SFTConfig

    cfg = load_profile(profile)
    validate_trainer_keys("grpo", cfg.train.grpo, GRPOConfig)
    validate_trainer_keys("sft", cfg.train.sft, SFTConfig)


def test_paper_profile_keeps_per_prompt_settings():
    g = load_profile("paper").train.grpo
    assert g["num_generations"] == 10 and g["max_completion_length"] == 800 and g["learning_rate"] == 1e-6
    assert (
        g["beta"] == 0.001 and g["epsilon"] == 0.2 and g["temperature"] == 1.0 and g["lr_scheduler_type"] == "constant"
    )
    gen = g["per_device_train_batch_size"] * g["steps_per_generation"]  # completions per generation round
    assert gen % g["num_generations"] == 0 and gen // g["num_generations"] == 64, "64 whole prompt groups per round"
    assert g["steps_per_generation"] // g["gradient_accumulation_steps"] == 4, "4 optimizer steps per round"
    assert g["max_steps"] == 150 * 4


def test_sft_target_layout_round_trips():
    target = sft_target(PERSP, "A summary.")
    layout = check_layout(target)
    assert layout.valid and parse_perspectives(layout.core) == [
        ("Honesty", "Truth matters. It builds trust."),
        ("Care", "Feelings count!"),
    ]


def test_offline_summary_names_every_perspective():
    s = offline_summary(PERSP)
    assert s == "From the perspective of honesty, truth matters. From the perspective of care, feelings count."


def test_summary_prompt_and_capitalisation():
    p = summary_prompt("Lying", PERSP)
    assert p.startswith("Please summarize the following value-based comments") and p.endswith("**Summary:**")
    assert "1. In the perspective of Honesty, Truth matters." in p
    assert capitalise_sentences("one. two! three? four") == "One. Two! Three? Four"


def test_unsloth_without_gpu_is_a_clear_error(tmp_path):
    code = (
        "from opgrpo_lib.config import load_profile; from opgrpo_lib.runs import run_paths; from opgrpo_lib import train;"
        f"cfg = load_profile('tiny', {{'train.backend': 'unsloth'}}); train.run_grpo(cfg, run_paths(cfg, r'{tmp_path}'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "needs a CUDA GPU" in out.stderr
    assert "Unsloth: " not in out.stdout


@pytest.mark.slow
def test_grpo_ddp_two_cpu_processes(tmp_path, opv2_dir):
    """The DDP path: torchrun with 2 CPU processes (gloo), 2 GRPO steps on the tiny model."""
    env = {**os.environ, "OPGRPO_DATA_DIR": str(opv2_dir), "OMP_NUM_THREADS": "1"}
    run = str(tmp_path / "run")
    subprocess.run([sys.executable, "-m", "opgrpo_lib.cli", "data", "--profile", "tiny", "--run-dir", run],
                   check=True, capture_output=True, env=env)  # fmt: skip
    sets = ["train.init=tiny:causal-lm", "reward.estimator=tiny:encoder", "train.grpo.max_steps=2",
            "train.grpo.save_steps=1", "train.grpo.per_device_train_batch_size=4"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "opgrpo_lib.cli",
           "train", "--profile", "tiny", "--run-dir", run] + [x for s in sets for x in ("--set", s)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "grpo" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["completions_per_step"] == 8
    assert (tmp_path / "run" / "grpo" / "policy" / "config.json").exists()


def test_disk_check_fails_before_training(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from opgrpo_lib import train
    from opgrpo_lib.models import resolve

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1024))  # 1 kB free
    with pytest.raises(OSError, match="needs about .* GB free"):
        train.check_disk(load_profile("tiny"), resolve("tiny:causal-lm"), tmp_path, "grpo")


def test_compact_targets_keep_the_layout_and_every_name():
    from opgrpo_lib.reward import format_parts
    from opgrpo_lib.text import check_layout
    from opgrpo_lib.train import compact_target

    persp = [{"name": "Honesty", "explanation": "Returning the wallet intact reflects truthfulness and integrity. More."},
             {"name": "Duty to respect property", "explanation": "People have a duty not to keep what belongs to others"}]  # fmt: skip
    text = compact_target(persp, words=5)
    assert check_layout(text).valid
    assert "In the perspective of Honesty, Returning the wallet intact reflects." in text
    parts = format_parts(text)
    assert parts.score == 2.0 and not parts.missing_from_summary
