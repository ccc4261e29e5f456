"""Whether a Trainer checkpoint folder is complete (used by resume logic in ``runs`` and by ``lifecycle``)."""

from __future__ import annotations

import json
from pathlib import Path


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (None = complete): its trainer state must parse
    and every safetensors file must hold a complete header and data (a kill mid-save truncates them)."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"trainer_state.json unreadable ({type(exc).__name__})"
    weights = sorted(ckpt.glob("*.safetensors")) + sorted(ckpt.glob("pytorch_model*.bin"))
    if not weights:
        return "no weight file"
    from safetensors import safe_open

    for w in weights:
        if w.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(w), "np") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types)
            return f"{w.name} is incomplete ({str(exc)[:80]})"
    return None
