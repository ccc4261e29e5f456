"""What every figure module shares (step 07 ``figures``, ``figures_gpu``, ``figures_authors``): the fixed system
colours, the text sizes, saving figures and writing tables."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """PNG + PDF with no creation date in their metadata: the same inputs give byte-identical files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(out[0], dpi=130, metadata={"Software": None})
    fig.savefig(out[1], metadata={"CreationDate": None, "Creator": None, "Producer": None})
    plt.close(fig)
    return out


# One colour per system in every figure (Okabe-Ito, colour-blind safe); the authors' logged counterpart of a system
# is drawn in the same colour, dashed.
SYSTEM_COLORS = {
    "op_grpo": "#D55E00",
    "sft": "#0072B2",
    "base_implicit": "#009E73",
    "base_explicit": "#E69F00",
    "modplural": "#CC79A7",
}
OTHER_COLORS = ["#56B4E9", "#F0E442", "#000000", "#999999"]
LOGGED_AS = {
    "OP-GRPO Qwen2.5-3B im-rewarddown": "op_grpo",
    "ModPlural raw": "modplural",
    "Qwen2.5-1.5B-Instruct implicit": "base_implicit",
    "Qwen2.5-1.5B-Instruct explicit": "base_explicit",
}
# Sizes for figures read at their saved size (PNG at 130 dpi, about 100 % zoom in a notebook).
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def system_color(system: str) -> str:
    """The fixed colour of a system (an unknown one gets a stable colour from the rest of the palette)."""
    if system in SYSTEM_COLORS:
        return SYSTEM_COLORS[system]
    return OTHER_COLORS[sum(map(ord, system)) % len(OTHER_COLORS)]


def styled(fn):
    """Build the figure under :data:`STYLE` (only inside the call: the user's matplotlib settings stay as they are)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> plt.Figure:
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def write_table(df: pd.DataFrame, stem: Path, caption: str, floatfmt: str = "%.3f") -> list[Path]:
    """CSV (full precision) + Markdown + LaTeX (rounded) next to each other."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    df.to_csv(paths[0], index=False)
    shown = df.copy()
    for c in shown.columns:
        if pd.api.types.is_float_dtype(shown[c]):
            shown[c] = shown[c].map(lambda v: "" if pd.isna(v) else floatfmt % v)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    lines = [f"<!-- {caption} -->", header, "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in shown.astype(str).itertuples(index=False)]
    paths[1].write_text("\n".join(lines) + "\n")
    cols = "l" * len(shown.columns)
    esc = lambda x: str(x).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    tex = [
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{{esc(caption)}}}",
        f"\\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(esc(c) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    tex += [" & ".join(esc(v) for v in r) + r" \\" for r in shown.astype(str).itertuples(index=False)]
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    paths[2].write_text("\n".join(tex) + "\n")
    return paths
