"""Saving figures, shared by step 07 (``figures``) and the GPU benchmark figure (``figures_gpu``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """PNG + PDF with no creation date in their metadata: the same inputs give byte-identical files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(out[0], dpi=130, metadata={"Software": None})
    fig.savefig(out[1], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return out
