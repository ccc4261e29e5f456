"""The benchmark scripts run and report what they claim (no wall-clock assertions)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(script, *args):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_reward_speed_reports_identical_rewards(released_dir):
    res = run_json("reward_speed.py", "--prompts", "3", "--group", "3", "--repeats", "1")
    assert res["identical"] is True and res["completions"] == 9
    assert {"speedup_vs_reference", "ratio_to_encode_only"} <= set(res)
    assert res["distinct_sentences_encoded"] < res["sentences_encoded_by_reference"]


@pytest.mark.slow
def test_eval_speed_reports_identical_scores(released_dir):
    res = run_json("eval_speed.py", "--rows", "6", "--repeats", "1")
    assert res["identical"] is True and res["rows"] == 6 and "speedup_vs_per_situation" in res
    assert res["step06"]["identical"] is True and res["step06"]["texts"] == 4


def test_tiny_shape_is_the_tiny_lm_architecture():
    import shapes
    import torch

    model = shapes.build_model("tiny", vocab_size=800, seed=0)
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (128, 256, 2, 4)
    assert cfg.num_key_value_heads == 2 and cfg.vocab_size == 800 and cfg.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 800)
    again = shapes.build_model("tiny", vocab_size=800, seed=0)
    assert torch.equal(model.lm_head.weight, again.lm_head.weight)  # seeded
    with pytest.raises(ValueError, match="vocab_size"):
        shapes.qwen2_config("tiny")


@pytest.mark.parametrize("shape", ["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"])
def test_qwen_shapes_match_published_parameter_counts(shape):
    """Built on the meta device (no memory): total and non-embedding counts equal the published 0.49B/1.54B/3.09B
    and 0.36B/1.31B/2.77B to the published precision."""
    import shapes

    n = shapes.count_parameters(shape)
    pub = shapes.PUBLISHED[shape]
    assert round(n["total"] / 1e9, 2) == pub["params"] / 1e9
    assert round(n["non_embedding"] / 1e9, 2) == pub["non_embedding_params"] / 1e9
    cfg = shapes.qwen2_config(shape)
    assert cfg.vocab_size == 151936 and cfg.tie_word_embeddings and cfg.rope_parameters["rope_theta"] == 1e6


def test_step_split_and_ratios():
    import grpo_step

    step = {
        "start": 0.0,
        "end": 10.0,
        "rewards": [(6.0, 6.5, 400)],
        "records": [
            ("GRPOTrainer.transformers.generate", 0.5, 5.0),
            ("GRPOTrainer._get_per_token_logps_and_entropies", 5.1, 5.9),
            ("GRPOTrainer._get_per_token_logps_and_entropies", 7.0, 8.0),
        ],
    }
    s = grpo_step.split_step(step)
    assert s["generation_s"] == 4.5 and s["training_s"] == 5.5 and s["reward_s"] == 0.5
    assert s["reference_forward_s"] == pytest.approx(0.8) and s["policy_forward_backward_s"] == 3.5
    assert s["other_s"] == pytest.approx(10 - 4.5 - 0.5 - 0.8 - 3.5) and s["completion_tokens"] == 400
    no_profile = grpo_step.split_step({**step, "records": []})
    assert no_profile["generation_s"] == 6.0 and no_profile["generation_timing"] != "profiled"
    assert no_profile["reference_forward_s"] is None  # not profiled: unknown, not zero
    rows = [
        {
            "backend": "hf",
            "status": "ok",
            "step_s": 30.0,
            "generation_s": 24.0,
            "training_s": 6.0,
            "peak_gpu_mem_gib": 40.0,
            "completion_tokens_per_s": 1000.0,
        },
        {
            "backend": "unsloth",
            "status": "ok",
            "step_s": 15.0,
            "generation_s": 12.0,
            "training_s": 3.0,
            "peak_gpu_mem_gib": 30.0,
            "completion_tokens_per_s": 2000.0,
        },
        {"backend": "unsloth-4bit", "status": "error", "error": "no bitsandbytes"},
    ]
    r = grpo_step.ratios(rows)
    assert set(r) == {"unsloth/hf"}
    assert r["unsloth/hf"]["speedup"] == 2.0 and r["unsloth/hf"]["memory_saving"] == 0.25
    assert grpo_step.goal(r) == {"speedup_at_least_1.5x": True, "memory_saving_at_least_30pct": False}


@pytest.mark.slow
def test_grpo_step_cpu_tiny_writes_json(tmp_path):
    out = tmp_path / "grpo_step_tiny.json"
    res = run_json("grpo_step.py", "--device", "cpu", "--shape", "tiny", "--out", str(out), "--quiet")
    assert json.loads(out.read_text()) == res
    assert res["shape"] == "tiny" and res["device"]["type"] == "cpu" and res["versions"]["trl"]
    assert res["settings"]["shortened_for_cpu"] and res["settings"]["warmup_steps_excluded"] == 1
    assert res["settings"]["finetuning"]["method"] == "LoRA" and res["tokenizer"]["name"] == "tiny:causal-lm"
    assert res["model"]["config"]["hidden_size"] == 128 and res["model"]["parameters"] > 0
    (row,) = res["rows"]
    assert row["backend"] == "hf" and row["status"] == "ok", row
    assert row["steps"] == 3 and row["measured_steps"] == 2 and row["generation_timing"] == "profiled"
    assert row["step_s"] > 0 and 0 < row["generation_s"] < row["step_s"] and row["training_s"] > 0
    assert row["reference_forward_s"] > 0  # beta = 0.001: the adapter-disabled reference forward is timed
    assert row["completion_tokens"] == 8 * 32 and row["completion_tokens_per_s"] > 0
    assert 0 <= row["reward_share"] < 1 and "peak_gpu_mem_gib" not in row
    assert res["ratios"] == {} and res["goal"] is None


@pytest.mark.slow
def test_grpo_step_with_trained_weights_real_rows_and_the_cpu_profile(tmp_path):
    """``--profile cpu --model --data``: the cpu profile's settings (full fine-tuning, its beta and completion
    budget), the given weights and training rows, and the real OP reward."""
    import pandas as pd

    from opgrpo_lib.models import resolve

    rows = tmp_path / "train.parquet"
    pd.DataFrame(
        {
            "prompt": [f"Keeping a promise {i}" for i in range(8)],
            "answer": [
                "In the perspective of Honesty, a word given binds.\nIn the perspective of Care, others rely on it."
            ]
            * 8,
        }
    ).to_parquet(rows)
    out = tmp_path / "step.json"
    res = run_json(
        "grpo_step.py",
        "--device",
        "cpu",
        "--profile",
        "cpu",
        "--model",
        resolve("tiny:causal-lm"),
        "--data",
        str(rows),
        "--reward",
        "op",
        "--completion-length",
        "16",
        "--out",
        str(out),
        "--quiet",
    )
    st = res["settings"]
    assert st["profile"].startswith("cpu") and st["model_weights"].startswith("trained") and st["rows"] == str(rows)
    assert st["finetuning"] == "full" and st["beta"] == 0.001 and st["shortened_for_cpu"]  # 16 of 320 tokens
    assert (st["per_device_train_batch_size"], st["num_generations"], st["max_completion_length"]) == (8, 4, 16)
    (row,) = res["rows"]
    assert row["status"] == "ok" and row["reward_s"] > 0 and row["reference_forward_s"] > 0, row
    assert res["model"]["weights"] == "trained" and res["tokenizer"]["vocab_size"] > 0


def _synthetic_result(shape, hf_s, un_s):
    rows = [
        {
            "backend": "hf",
            "status": "ok",
            "step_s": hf_s,
            "generation_s": 0.8 * hf_s,
            "training_s": 0.2 * hf_s,
            "peak_gpu_mem_gib": 40.0,
        },
        {
            "backend": "unsloth",
            "status": "ok",
            "step_s": un_s,
            "generation_s": 0.7 * un_s,
            "training_s": 0.3 * un_s,
            "peak_gpu_mem_gib": 25.0,
        },
        {"backend": "unsloth-4bit", "status": "error", "error": "x"},
    ]
    return {"shape": shape, "device": {"type": "cuda", "name": "NVIDIA H200"}, "rows": rows}


def test_gpu_figure_from_synthetic_results(tmp_path):
    from opgrpo_lib import figures_gpu

    src = tmp_path / "results" / "gpu"
    src.mkdir(parents=True)
    assert figures_gpu.build(src, tmp_path / "fig") == []
    for shape, hf_s, un_s in (("qwen2.5-3b", 30.0, 18.0), ("qwen2.5-1.5b", 20.0, 11.0)):
        (src / f"grpo_step_{shape}.json").write_text(json.dumps(_synthetic_result(shape, hf_s, un_s)))
    written = figures_gpu.build(src, tmp_path / "fig")
    assert sorted(p.name for p in written) == ["grpo_step.csv", "grpo_step.pdf", "grpo_step.png"]
    assert all(p.stat().st_size > 0 for p in written)
    df = figures_gpu.load_rows(src)
    assert list(zip(df["shape"], df["backend"])) == [
        ("qwen2.5-1.5b", "hf"),
        ("qwen2.5-1.5b", "unsloth"),
        ("qwen2.5-3b", "hf"),
        ("qwen2.5-3b", "unsloth"),
    ]  # error rows dropped, shapes in size order
