"""Which device a step runs on: CUDA when the profile allows it and torch can use a GPU, else the CPU. A GPU that
is visible but unusable by torch (a CPU-only build, a driver too old for its CUDA) is an error, never a silent CPU
run. Kept apart from the memory/disk model (``gpu``), so an edit of that model reruns only the steps that train."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .config import RunConfig

GIB = 2**30


class GpuUnusable(RuntimeError):
    """A CUDA device is visible but torch cannot use it (CPU-only torch build, or a driver too old for its CUDA)."""


def visible_gpu() -> str | None:
    """Name (and driver) of a visible NVIDIA GPU, from ``nvidia-smi`` or ``/dev/nvidia*``; None when there is none.
    ``OPGRPO_FAKE_VISIBLE_GPU`` simulates one (tests)."""
    fake = os.environ.get("OPGRPO_FAKE_VISIBLE_GPU")
    if fake:
        return fake
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
            if line:
                name, _, driver = line.partition(",")
                return f"{name.strip()} (driver {driver.strip()})"
        except (OSError, subprocess.SubprocessError):
            pass
    if any(Path("/dev").glob("nvidia[0-9]*")):
        return "an NVIDIA device (/dev/nvidia*)"
    return None


def cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def why_unusable(visible: str) -> str:
    import torch

    build = torch.version.cuda
    if build is None:
        cause = f"torch {torch.__version__} is a CPU-only build"
    else:
        cause = (
            f"torch {torch.__version__} is built for CUDA {build} and the driver cannot run it (CUDA 12.x builds "
            "need driver >= 525.60, CUDA 13.0 builds >= 580)"
        )
    return (
        f"{visible} is visible but torch cannot use it: {cause}. Install the [gpu] stack (README, 'One GPU') "
        "or set PROFILE=cpu / device: cpu to run on the CPU on purpose"
    )


def require_usable_gpu() -> None:
    """Raise :class:`GpuUnusable` (one line) when a GPU is visible but torch cannot use it."""
    visible = visible_gpu()
    if visible and not cuda_usable():
        raise GpuUnusable(why_unusable(visible))


def free_gib() -> float:
    """Free memory of CUDA device 0."""
    import torch

    return torch.cuda.mem_get_info(0)[0] / GIB


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def resolve_device(cfg: RunConfig) -> str:
    """ "cuda" when the profile's ``device`` allows it (auto | cuda) and a GPU is present, else "cpu";
    ``device: cuda`` without a GPU is an error, not a silent CPU run."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device in ("auto", "cuda") and not cuda:
        require_usable_gpu()  # a visible GPU torch cannot use: say why instead of running on the CPU
    if cfg.device == "cuda" and not cuda:
        raise RuntimeError("device: cuda, but torch sees no CUDA GPU here (use device: auto or cpu)")
    return "cuda" if cfg.device in ("auto", "cuda") and cuda else "cpu"
