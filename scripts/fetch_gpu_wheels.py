"""Fetch what the device machine lacks for the GPU check into ``.whl/`` (git-ignored), and check the 64 MiB carry
limit before anything is sent.

The device machine (nvidia-h200; /work/.library/device/KINDS.md) runs Python 3.12 on x86-64 with torch 2.11+cu130,
transformers 5.17, peft, accelerate, sentence-transformers, triton, tokenizers, pandas, pyarrow, numpy, typer,
rich, ... but no trl, datasets (nor dill / multiprocess), unsloth, unsloth_zoo and several of their imports, and no
internet. This script downloads exactly those wheels (pinned, ``--no-deps``, for cp312 manylinux x86-64), stages the
SmolLM2 tokenizer the qwen2.5-* benchmark shapes use (``models/`` does not travel), then adds up what a device call
sends (the working tree: tracked + untracked-not-ignored files, plus ``.whl/``) and prints the size of each wheel.

* Default: the wheels as published. Unsloth's full set does not fit (bitsandbytes alone is 41 MiB: binaries for
  every CUDA and ROCm release), so optional wheels are dropped, largest first, until it fits; the script says
  which and what that costs (no bitsandbytes = no 4-bit row).
* ``--slim``: repack two wheels so that everything fits, 4-bit included: unsloth without ``studio/`` (Unsloth
  Studio's web UI, 73 MiB unpacked; the library never imports it) and bitsandbytes with only the CUDA build the
  device's torch loads (``libbitsandbytes_cuda130.so``) and the CPU one. RECORD is rewritten to match.

peft and xformers are carried although the device has a peft: its version is unknown there and Unsloth needs peft
>= 0.18 (ours: 0.21.2, the project pin); xformers 0.0.35 is what Unsloth's own ``cu130onlytorch2110`` extra pins for
the device's torch 2.11+cu130 (3.1 MiB). Never carried, though Unsloth's metadata names them: diffusers (diffusion
models) and hf_transfer (hub downloads), which Unsloth's language-model training path does not import, and
pydantic, json5, nest-asyncio and structlog, which serve only Unsloth Studio / CLI. A missing SmolLM2 tokenizer is
an error (the qwen2.5-* shapes cannot run without it). ``--extra NAME==VERSION`` adds a wheel (e.g. one that ``pip show`` on the device reports
missing).

    .venv/bin/python scripts/fetch_gpu_wheels.py            # then a device call with carry [".whl"]:
    bash scripts/gpu_check.sh                               #   (its command) installs .whl/*.whl and benchmarks
    .venv/bin/python scripts/fetch_gpu_wheels.py --slim     # everything incl. bitsandbytes (4-bit row)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 64.0  # the device tool's limit on the working tree that travels, carried paths included
PIP_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", "--no-deps"]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# (requirement, why the device needs it)
REQUIRED = [
    ("trl==1.14.2", "GRPOTrainer (our pin)"),
    ("datasets==4.8.5", "trl, unsloth (absent on the device)"),
    ("dill==0.4.1", "datasets"),
    ("multiprocess==0.70.19", "datasets"),
    ("unsloth==2026.10.9", "the unsloth backend (our [gpu] pin)"),
    ("unsloth_zoo==2026.10.9", "unsloth"),
    ("peft==0.21.2", "LoRA (our pin; Unsloth needs >= 0.18, the device's version is unknown)"),
    ("xformers==0.0.35", "Unsloth's attention kernels (its cu130onlytorch2110 extra's pin)"),
    ("cut_cross_entropy==25.1.1", "unsloth_zoo's fused cross-entropy loss"),
    ("torchao==0.18.0", "unsloth_zoo (imported when present; fp8 / QAT paths)"),
    ("tyro==1.0.17", "unsloth, unsloth_zoo (metadata)"),
    ("docstring-parser==0.18.0", "tyro"),
    ("typeguard==4.6.1", "tyro"),
    ("msgspec==0.22.0", "unsloth_zoo (metadata)"),
    ("sentence-splitter==1.4", "this project (opgrpo_lib.evaluate)"),
]
# dropped (largest first) when the set does not fit
OPTIONAL = [
    ("bitsandbytes==0.50.2", "4-bit base weights (the unsloth-4bit row)"),
]
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def dist_of(wheel: Path) -> str:
    return norm(wheel.name.split("-")[0])


def mib(n: int | float) -> float:
    return n / 2**20


def tree_bytes() -> int:
    """Bytes of what a device call sends besides the carried paths: tracked + untracked-not-ignored files (and a
    ``shared/`` folder inside the checkout, if any)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    total = sum((ROOT / f).stat().st_size for f in out.decode().split("\0") if f and (ROOT / f).is_file())
    shared = ROOT / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def download(reqs: list[str], dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        *PIP_TARGET,
        *[a for p in PLATFORMS for a in ("--platform", p)],
        "-d",
        str(dest),
        *reqs,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [x for x in proc.stderr.splitlines() if not x.startswith("WARNING: Location")]
        raise SystemExit("pip download failed:\n" + "\n".join(errors[-20:]))


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(wheel: Path, drop) -> int:
    """Rewrite ``wheel`` without the members for which ``drop(name)`` is true (RECORD rewritten to match);
    returns the bytes saved."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        kept = [i for i in src.infolist() if not drop(i.filename)]
        record = next(i.filename for i in kept if i.filename.endswith(".dist-info/RECORD"))
        lines = []
        for info in kept:
            if info.filename == record:
                continue
            data = src.read(info)
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
            if not info.is_dir():
                lines.append(_record_line(info.filename, data))
        dst.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
    tmp.replace(wheel)
    return before - wheel.stat().st_size


def slim(dest: Path, cuda: str) -> list[str]:
    notes = []
    for wheel in dest.glob("*.whl"):
        if dist_of(wheel) == "unsloth":
            saved = repack(wheel, lambda n: n.startswith("studio/"))
            notes.append(f"{wheel.name}: studio/ (Unsloth Studio web UI) removed, -{mib(saved):.1f} MiB")
        elif dist_of(wheel) == "bitsandbytes":
            keep = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
            saved = repack(wheel, lambda n, keep=keep: n.endswith(".so") and n.rsplit("/", 1)[-1] not in keep)
            notes.append(f"{wheel.name}: native libraries other than {sorted(keep)} removed, -{mib(saved):.1f} MiB")
    return notes


def stage_tokenizer(dest: Path) -> Path | None:
    sys.path.insert(0, str(ROOT))
    from opgrpo_lib.models import resolve

    src = Path(resolve(SMOLLM2))
    if not (src / "tokenizer.json").exists():
        raise SystemExit(
            f"ERROR: no local {SMOLLM2} tokenizer (run `make models`): the qwen2.5-* shapes cannot run "
            "on the device without it"
        )
    out = dest / "tokenizer-smollm2"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    return out


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", default=str(ROOT / ".whl"))
    p.add_argument("--slim", action="store_true", help="repack unsloth and bitsandbytes so that everything fits")
    p.add_argument("--cuda", default="130", help="the CUDA build of bitsandbytes kept by --slim (device torch: cu130)")
    p.add_argument("--no-optional", action="store_true", help="only the required set (no bitsandbytes)")
    p.add_argument("--extra", action="append", default=[], help="another NAME==VERSION wheel (required)")
    p.add_argument("--no-tokenizer", action="store_true", help="do not stage the SmolLM2 tokenizer")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    return p.parse_args()


def _fit(dest: Path, tree: int, limit: float, optional: list, why: dict[str, str]) -> list[str]:
    """Delete the biggest optional wheels until the carried total fits ``limit``; what was left out, and why."""
    dropped = []
    opt_names = [norm(re.split(r"[=<>!~ ]", r)[0]) for r, _ in optional]
    while tree + dir_bytes(dest) > limit and opt_names:
        sizes = {w: w.stat().st_size for w in dest.glob("*.whl") if dist_of(w) in opt_names}
        if not sizes:
            break
        biggest = max(sizes, key=sizes.get)
        dropped.append(f"{biggest.name} ({mib(sizes[biggest]):.1f} MiB): {why.get(dist_of(biggest), '')}")
        opt_names.remove(dist_of(biggest))
        biggest.unlink()
    return dropped


def _report(dest: Path, tokenizer: Path | None, tree: int, why: dict[str, str], limit_mib: float) -> int:
    """Print every wheel with its size and purpose and the carried total; the total in bytes."""
    wheels = sorted(dest.glob("*.whl"), key=lambda w: -w.stat().st_size)
    print(f"{'wheel':<78}{'MiB':>8}  needed for")
    for w in wheels:
        print(f"{w.name:<78}{mib(w.stat().st_size):>8.2f}  {why.get(dist_of(w), '')}")
    print(f"{'wheels':<78}{mib(sum(w.stat().st_size for w in wheels)):>8.2f}")
    if tokenizer:
        shown = tokenizer.relative_to(ROOT) if tokenizer.is_relative_to(ROOT) else tokenizer
        print(f"{str(shown):<78}{mib(dir_bytes(tokenizer)):>8.2f}")
    print(f"{'working tree (tracked + untracked-not-ignored)':<78}{mib(tree):>8.2f}")
    total = tree + dir_bytes(dest)
    print(f"{'total sent with carry [' + repr(dest.name) + ']':<78}{mib(total):>8.2f}  limit {limit_mib:.0f} MiB")
    return total


def main() -> int:
    args = _args()
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two stop the install on the device
        old.unlink()
    required = REQUIRED + [(r, "--extra") for r in args.extra]
    optional = [] if args.no_optional else OPTIONAL
    why = {norm(re.split(r"[=<>!~ ]", r)[0]): w for r, w in required + optional}
    download([r for r, _ in required + optional], dest)
    notes = slim(dest, args.cuda) if args.slim else []
    tokenizer = None if args.no_tokenizer else stage_tokenizer(dest)
    tree, limit = tree_bytes(), args.limit_mib * 2**20
    dropped = _fit(dest, tree, limit, optional, why)
    total = _report(dest, tokenizer, tree, why, args.limit_mib)
    for n in notes:
        print("slimmed: " + n)
    for d in dropped:
        print("LEFT OUT to fit: " + d)
    if any("bitsandbytes" in d for d in dropped) or args.no_optional:
        print(
            "=> no 4-bit row (unsloth-4bit); 16-bit LoRA and full fine-tuning do not need bitsandbytes. "
            "--slim keeps it."
        )
    if total > limit:
        print(f"ERROR: {mib(total):.1f} MiB > {args.limit_mib:.0f} MiB even without the optional wheels")
        return 1
    print(
        f"OK: {mib(limit - total):.1f} MiB to spare. Device call: carry ['{dest.name}'], command "
        "'bash scripts/gpu_check.sh'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
