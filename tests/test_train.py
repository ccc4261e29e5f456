import json
import os
import subprocess
import sys

import pytest

from opgrpo_lib.config import ConfigError, load_profile
from opgrpo_lib.sft_data import capitalise_sentences, offline_summary, sft_target, summary_prompt
from opgrpo_lib.text import check_layout, parse_perspectives
from opgrpo_lib.train import grpo_config, precision_plan, sft_config

PERSP = [
    {"name": "Honesty", "explanation": "Truth matters. It builds trust."},
    {"name": "Care", "explanation": "Feelings count!"},
]


def test_trainer_keys_are_validated_against_installed_trl(tmp_path):
    """Once, at load: a key the installed TRL does not have (TRL 1.x dropped max_prompt_length) never reaches a
    step, nor does a num_generations that does not divide the generation batch (TRL's own cross-field rule)."""
    with pytest.raises(ConfigError, match=r"train\.grpo\.max_prompt_length: not a field of the installed TRL"):
        load_profile("tiny", {"train.grpo.max_prompt_length": 512})
    with pytest.raises(ConfigError, match="kl_coef"):
        load_profile("tiny", {"train.grpo.kl_coef": 0.1})
    with pytest.raises(ConfigError, match=r"train\.grpo\.num_generations: 3 must be >= 2 and divide"):
        load_profile("tiny", {"train.grpo.num_generations": 3})
    assert grpo_config(load_profile("tiny"), tmp_path).max_steps > 0


@pytest.mark.parametrize("profile", ["tiny", "cpu", "paper", "gpu-small"])
def test_every_profile_builds_the_trl_configs(profile, tmp_path):
    """What passes the load check also passes TRL's own ``__post_init__`` (the rules are the same)."""
    cfg = load_profile(profile, {"device": "cpu", "train.backend": "hf"})
    plan = precision_plan(cfg, "cpu")
    assert grpo_config(cfg, tmp_path, plan).num_generations == cfg.train.grpo.get("num_generations", 8)
    assert sft_config(cfg, tmp_path, plan).output_dir.endswith("checkpoints")


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
        "from opgrpo_lib.config import load_profile; from opgrpo_lib.runs import run_paths; "
        "from opgrpo_lib.steps import grpo as grpo_step;"
        f"cfg = load_profile('tiny', {{'train.backend': 'unsloth'}}); grpo_step.run(cfg, run_paths(cfg, r'{tmp_path}'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "needs a CUDA GPU" in out.stderr
    assert "Unsloth: " not in out.stdout


@pytest.mark.slow
def test_grpo_ddp_two_cpu_processes(tmp_path, opv2_dir):
    """The DDP path: torchrun with 2 CPU processes (gloo), 2 GRPO steps on the tiny model."""
    env = {**os.environ, "OPGRPO_DATA_DIR": str(opv2_dir), "OMP_NUM_THREADS": "1"}
    run = str(tmp_path / "run")
    subprocess.run(
        [sys.executable, "-m", "opgrpo_lib.cli", "data", "--profile", "tiny", "--run-dir", run],
        check=True,
        capture_output=True,
        env=env,
    )
    sets = [
        "train.init=tiny:causal-lm",
        "reward.estimator=tiny:encoder",
        "train.grpo.max_steps=2",
        "train.grpo.save_steps=1",
        "train.grpo.per_device_train_batch_size=4",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "opgrpo_lib.cli",
        "grpo",
        "--profile",
        "tiny",
        "--run-dir",
        run,
    ] + [x for s in sets for x in ("--set", s)]
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
    from opgrpo_lib.sft_data import compact_target
    from opgrpo_lib.text import check_layout

    persp = [
        {"name": "Honesty", "explanation": "Returning the wallet intact reflects truthfulness and integrity. More."},
        {"name": "Duty to respect property", "explanation": "People have a duty not to keep what belongs to others"},
    ]
    text = compact_target(persp, words=5)
    assert check_layout(text).valid
    assert "In the perspective of Honesty, Returning the wallet intact reflects truthfulness." in text
    parts = format_parts(text)
    assert parts.score == 2.0 and not parts.missing_from_summary


def test_compact_lines_are_whole_sentences():
    from opgrpo_lib.sft_data import short_sentence

    long = "Stealing the wallet from Konrad violates the value of honesty, as taking property without permission is wrong."
    assert short_sentence(long, 12) == "Stealing the wallet from Konrad violates the value of honesty"
    dependent = (
        "If the fly poses a health risk, killing it may be justified to protect the health of everyone at home."
    )
    assert short_sentence(dependent, 8).startswith("If the fly poses a health risk, killing it")
    assert short_sentence("Short and complete. Another one.", 10) == "Short and complete"
    assert short_sentence("People may need help (e.g., food or shelter) and others can give it to them.", 6) == (
        "People may need help (e.g., food or shelter)"
    )


@pytest.mark.slow
def test_cpu_targets_over_every_training_situation_end_in_whole_clauses(tmp_path, opv2_dir, monkeypatch):
    """Every perspective line of the cpu profile's SFT targets is a whole sentence of the explanation or a first
    clause that ends on a content word (no "... can be a.", "... to manage your."), inside the token budget."""
    from transformers import AutoTokenizer

    from opgrpo_lib import data
    from opgrpo_lib.models import build
    from opgrpo_lib.runs import run_paths
    from opgrpo_lib.sft_data import _SENTENCE_END_RE, FUNCTION_WORDS, sft_targets, short_sentence
    from opgrpo_lib.steps import data as data_step

    cfg = load_profile("cpu", {"data.local_dir": str(opv2_dir)})
    paths = run_paths(cfg, tmp_path)
    data_step.run(cfg, paths)
    train, _ = data.load_prepared(paths.data)
    lines = 0
    for persp in train["perspectives"]:
        for p in persp:
            line, first = (
                short_sentence(p["explanation"], cfg.train.compact_words),
                _SENTENCE_END_RE.split(p["explanation"].strip())[0].rstrip(".!?;:, "),
            )
            words = line.split()
            assert line == first or (len(words) >= 4 and words[-1].lower() not in FUNCTION_WORDS), line
            assert line.count("(") == line.count(")"), line
            lines += 1
    assert lines > 5000
    monkeypatch.setenv("OPGRPO_MODELS_DIR", str(tmp_path / "models"))  # `make test` does not run `make models`
    tok = AutoTokenizer.from_pretrained(build(cfg.models.policy))
    targets = sft_targets(cfg, train, {}, tok)
    kept = [t for t in targets if t is not None]
    budget = cfg.train.grpo["max_completion_length"]
    assert max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in kept) <= budget
    assert len(kept) >= 0.99 * len(targets)  # only situations with very many perspectives cannot fit
