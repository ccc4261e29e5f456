"""The memory/disk model of a profile (opgrpo_lib/gpu.py) against parameter counts on the meta device and a real KV
cache; PROFILE=auto with a visible-but-unusable GPU and with cards of several sizes (simulated)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opgrpo_lib import device, gpu, pipeline
from opgrpo_lib.config import load_profile

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("hub_id", sorted(gpu.KNOWN))
def test_known_shapes_match_meta_parameter_counts(hub_id):
    """The memory model's closed-form parameter count equals the built model's (the benchmark builds its shapes from
    ``gpu.KNOWN``), exactly, on the meta device."""
    import shapes

    name = next(k for k, v in shapes.PUBLISHED.items() if v["hub_id"] == hub_id)
    assert shapes.SHAPES[name]["hidden_size"] == gpu.KNOWN[hub_id].hidden_size
    assert gpu.KNOWN[hub_id].parameters() == shapes.count_parameters(name)["total"]


def test_lora_count_and_shape_of_a_saved_model():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from opgrpo_lib.models import resolve

    path = resolve("tiny:causal-lm")
    s = gpu.shape_of(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert s.parameters() == sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "v_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    assert s.lora_parameters(4, targets) == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert torch.float32 in {p.dtype for p in peft.parameters()}


def test_kv_formula_equals_a_real_cache():
    import torch
    from transformers import AutoModelForCausalLM

    from opgrpo_lib.models import resolve

    path = resolve("tiny:causal-lm")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    batch, tokens = 3, 17
    with torch.no_grad():
        out = model(torch.ones(batch, tokens, dtype=torch.long), use_cache=True)
    cache = out.past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert held == batch * tokens * gpu.shape_of(path).kv_bytes_per_token(2)
    # Qwen2.5-3B: 36 layers x 2 KV heads x 128 x (K, V) x bf16 = 36 KiB per token
    assert gpu.KNOWN["Qwen/Qwen2.5-3B-Instruct"].kv_bytes_per_token() == 36 * 1024


def test_paper_profile_adds_up_and_fits_an_80gb_gpu():
    cfg = load_profile("paper")
    s = gpu.KNOWN[cfg.models.policy]
    n = s.parameters()
    m = gpu.memory(cfg, s, "grpo")
    gib = gpu.GIB
    p = m["parts_gib"]
    assert p["weights"] == round(4 * n / gib, 2) and p["optimizer"] == round(8 * n / gib, 2)  # fp32 masters + AdamW
    assert p["reference"] == round(2 * n / gib, 2)  # bf16 reference
    b = m["batches"]
    assert (b["generation_batch"], b["generation_call"], b["completion"], b["prompt"]) == (640, 160, 800, 512)
    assert p["kv_cache"] == round(160 * 1312 * s.kv_bytes_per_token() / gib, 2)
    r = gpu.report("paper")
    assert r["fits"]["H100-80G"] and r["fits"]["A100-80G"] and not r["fits"]["A100-40G"]
    one_call = gpu.report("paper", {"train.generation_chunk": 0})  # TRL's single generate call of 640
    assert one_call["grpo"]["memory"]["parts_gib"]["kv_cache"] == round(640 * 1312 * s.kv_bytes_per_token() / gib, 2)
    assert not one_call["fits"]["H100-80G"] and one_call["fits"]["H200"]
    legacy = gpu.memory(load_profile("paper", {"train.precision": "bf16"}), s, "grpo")
    assert legacy["parts_gib"]["weights"] == round(2 * n / gib, 2) and legacy["parts_gib"]["compute_copies"] == 0


def test_disk_counts_what_is_written():
    cfg = load_profile("paper")
    s = gpu.KNOWN[cfg.models.policy]
    n = s.parameters()
    d = gpu.disk(cfg, s, "grpo", keep=10)  # every checkpoint kept (checkpoint evaluation), fp32 weights
    assert d["total_gb"] == round((10 * 4 * n + 8 * n + 4 * n) / gpu.GIB + 0.5, 1)
    small = load_profile("gpu-small")
    assert gpu.disk(small, gpu.KNOWN[small.models.policy], "grpo")["total_gb"] < 2  # LoRA adapters only


def test_gpu_small_profile_fits_a_t4_and_keeps_per_prompt_settings():
    load_profile("gpu-small")  # TRL's fields, ranges and batch rule are checked at load
    r = gpu.report("gpu-small")
    assert r["fits"]["T4"] and r["lora"]
    g, paper = load_profile("gpu-small").train.grpo, load_profile("paper").train.grpo
    for key in ("num_generations", "max_completion_length", "temperature", "beta", "epsilon", "loss_type"):
        assert g[key] == paper[key], key


def test_optimizer_states_stay_in_the_newest_checkpoint_only(tmp_path):
    import safetensors.torch
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from opgrpo_lib.train import OptimizerInLastCheckpoint

    for step in (1, 2, 3):
        c = tmp_path / f"checkpoint-{step}"
        c.mkdir()
        (c / "trainer_state.json").write_text("{}")
        safetensors.torch.save_file({"w": torch.zeros(1)}, str(c / "model.safetensors"))
        for f in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (c / f).write_bytes(b"x")
    cb = OptimizerInLastCheckpoint()
    cb.on_save(TrainingArguments(output_dir=str(tmp_path), use_cpu=True), TrainerState(), TrainerControl())
    assert [(tmp_path / f"checkpoint-{s}" / "optimizer.pt").exists() for s in (1, 2, 3)] == [False, False, True]
    assert all((tmp_path / f"checkpoint-{s}" / "model.safetensors").exists() for s in (1, 2, 3))


def _fake(monkeypatch, visible, usable, free=None, unsloth=True):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(device, "visible_gpu", lambda: visible)
    monkeypatch.setattr(device, "cuda_usable", lambda: usable)
    monkeypatch.setattr(device, "gpu_name", lambda: visible or "?")
    monkeypatch.setattr(device, "free_gib", lambda: free)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (object() if unsloth else None) if name == "unsloth" else real(name, *a),
    )


def test_auto_stops_on_a_visible_gpu_torch_cannot_use(monkeypatch):
    _fake(monkeypatch, "Tesla T4 (driver 470.82)", usable=False)
    with pytest.raises(device.GpuUnusable, match="Tesla T4 .* is visible but torch cannot use it"):
        pipeline.default_profile()


@pytest.mark.parametrize(
    ("card", "free", "want"),
    [
        ("T4", 14.7, "gpu-small"),
        ("L4", 22.0, "gpu-small"),
        ("A100-40G", 39.0, "gpu-small"),
        ("A100-80G", 78.0, "paper"),
        ("H200", 139.0, "paper"),
        ("busy", 5.0, "cpu"),
    ],
)
def test_auto_picks_what_fits_the_free_memory(monkeypatch, card, free, want):
    _fake(monkeypatch, card, usable=True, free=free)
    profile, why = pipeline.default_profile()
    assert profile == want, why
    assert f"{free:.1f} GiB free" in why
    _fake(monkeypatch, card, usable=True, free=free, unsloth=False)
    assert pipeline.default_profile()[0] == "cpu"


def test_no_gpu_means_cpu(monkeypatch):
    _fake(monkeypatch, None, usable=False)
    assert pipeline.default_profile() == ("cpu", "no CUDA GPU")


def test_cli_says_why_in_one_line_on_a_visible_unusable_gpu(tmp_path):
    """``opgrpo reproduce`` (PROFILE=auto) and a GPU step (``opgrpo grpo --profile paper``), with a GPU simulated as
    visible (``OPGRPO_FAKE_VISIBLE_GPU``) while this CPU-only torch cannot use it."""
    env = {**os.environ, "OPGRPO_FAKE_VISIBLE_GPU": "Tesla T4 (driver 470.82)", "PYTHONPATH": str(ROOT)}
    for args in (
        ["reproduce", "--profile", "auto", "--run-dir", str(tmp_path)],
        ["grpo", "--profile", "paper", "--run-dir", str(tmp_path)],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "opgrpo_lib.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [x for x in out.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "is visible but torch cannot use it" in lines[0] and "CPU-only build" in lines[0]


def test_readme_gpu_numbers_are_the_computed_ones():
    """The README's GPU memory/disk figures are this model's output (rounded), marked computed, not measured."""
    text = (ROOT / "README.md").read_text()
    paper, one_call, small = (
        gpu.report("paper"),
        gpu.report("paper", {"train.generation_chunk": 0}),
        gpu.report("gpu-small"),
    )
    assert f"**~{round(paper['peak_gib'])} GiB**" in text
    assert (
        f"peak at ~{round(one_call['peak_gib'])} GiB" in text and f"~{round(small['peak_gib'])} GiB computed" in text
    )
    assert (
        f"SFT ~{round(paper['sft']['disk']['total_gb'])} GiB, GRPO ~{round(paper['grpo']['disk']['total_gb'])} GiB"
        in text
    )
    assert "computed, not measured" in text
