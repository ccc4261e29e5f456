"""Write the thin pipeline notebooks (source of truth for their cells). Run: python scripts/make_notebooks.py"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]
REPO = "opgrpo/opgrpo"
REF = "v0.1.0"  # the pinned ref Colab installs; bump on release
BOOTSTRAP = (
    "# Colab only: clone the repo at a pinned ref and install `.[gpu]` (does nothing elsewhere).\n"
    "import sys\n"
    'if "google.colab" in sys.modules:\n'
    f"    !git clone -q https://github.com/{REPO}.git opgrpo && git -C opgrpo checkout -q {REF}\n"
    '    !pip install -q -e "opgrpo[gpu,notebooks,models]"\n'
    '    sys.path.insert(0, "opgrpo")'
)
SETUP = (
    "from opgrpo_lib import config, runs\n\n"
    "cfg = config.load_profile(profile, overrides)\n"
    "paths = runs.run_paths(cfg, run_dir)\n"
    "print(cfg.profile, cfg.config_hash, paths.root)"
)


def notebook(name: str, title: str, intro: str, cells: list[tuple[str, str]], default_profile: str = "cpu") -> None:
    badge = (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb)"
    )
    nb = nbf.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nb.cells = [nbf.v4.new_markdown_cell(f"# {title}\n\n{badge}\n\n{intro}"), nbf.v4.new_code_cell(BOOTSTRAP)]
    params = nbf.v4.new_code_cell(
        f'profile = "{default_profile}"  # configs/<profile>.yaml: tiny | cpu | paper\n'
        "run_dir = None  # default: runs/<profile>\n"
        'overrides = {}  # dotted keys, e.g. {"data.eval_per_split": 50}'
    )
    params.metadata["tags"] = ["parameters"]
    nb.cells += [params, nbf.v4.new_code_cell(SETUP)]
    for kind, src in cells:
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:2]}-{i:02d}"
    nbf.write(nb, ROOT / "notebooks" / f"{name}.ipynb")


notebook(
    "01_data_prep",
    "01 · OP-V2 data",
    "Fetches the OP-V2 files (local folder first, else the authors' repository at a pinned commit, hash-checked), "
    "parses every answer into ordered perspectives and writes the train/eval splits.\n\n"
    "**Inputs:** `test_*.csv` (and `final_train.csv` for `paper`). **Outputs:** `runs/<profile>/data/{train,eval}.parquet`, "
    "`data_card.{json,md}`, `perspectives_per_row.png`; `results/<profile>/data_card.json`.\n\n"
    "Runtime: seconds on any profile.",
    [
        ("code", "from opgrpo_lib import data\n\nprepared = data.run(cfg, paths)"),
        ("md", "## Data card"),
        (
            "code",
            "from IPython.display import Image, Markdown, display\n\n"
            'display(Markdown((paths.data / "data_card.md").read_text()))\n'
            'display(Image(filename=str(paths.data / "perspectives_per_row.png")))',
        ),
        ("code", "prepared.eval.head()"),
    ],
)

notebook(
    "02_similarity_estimator",
    "02 · Similarity estimator",
    "Mines one (anchor, positive, negative) triplet per training situation (keyword-masked cosine ≥ 0.75, a judge "
    "confirms the positive and picks the hard negative), fine-tunes the encoder with sentence-transformers' trainer "
    "(MultipleNegativesRankingLoss, scale 70) and compares base vs fine-tuned on held-out situations.\n\n"
    "**Judges:** `llm` (paper: Qwen3-8B) or `names` (offline deviation: perspective-name structure).\n\n"
    "**Inputs:** `runs/<profile>/data/train.parquet`. **Outputs:** `runs/<profile>/estimator/model` (the reward loads "
    "it), `results/<profile>/estimator/{metrics.json,calibration.csv,similarities.csv,*.png}`.\n\n"
    "Runtime: seconds on `tiny`, ~10 min on `cpu`, ~1 h on one GPU for `paper` (mining with the LLM judge dominates).",
    [
        ("code", "from opgrpo_lib import estimator\n\nresult = estimator.run(cfg, paths)"),
        (
            "code",
            "import json\n\nprint(json.dumps({k: result['metrics'][k] for k in ('train_triplets', 'heldout_triplets', "
            "'triplet_accuracy_base', 'triplet_accuracy_finetuned', 'judge_agreement')}, indent=2))",
        ),
        ("code", 'result["curves"]'),
        (
            "code",
            "from IPython.display import Image, display\n\n"
            'for path in result["plots"].values():\n    display(Image(filename=str(path)))',
        ),
    ],
)

notebook(
    "03_sft",
    "03 · SFT warm start",
    "Writes a summary for every training situation (paper: Qwen3-14B, temperature 0.1, top-p 0.6; offline: one "
    "sentence per comment) and fine-tunes the policy with TRL's `SFTTrainer` on the implicit prompt → "
    "`<core perspectives>…</core perspectives>\\n\\n<summary>…</summary>`.\n\n"
    "**Inputs:** `runs/<profile>/data/train.parquet`. **Outputs:** `runs/<profile>/sft/policy`, "
    "`results/<profile>/sft_train_log.csv`. Rerunning resumes from the last checkpoint.\n\n"
    "Runtime: ~1 min on `tiny`; see the README for `cpu` and `paper`.",
    [
        ("code", "from opgrpo_lib import train\n\nsft = train.run_sft(cfg, paths)"),
        ("code", 'sft["log"].tail()'),
    ],
)

notebook(
    "04_op_grpo",
    "04 · OP-GRPO",
    "GRPO with TRL's `GRPOTrainer` from the SFT policy; the reward is the authors' OP reward "
    "(0.3·coverage ladder + w_f·format + tag + w_u·uniqueness, clipped at 0), batched over each GRPO batch. "
    "Backends: `unsloth` (GPU) or `hf` (CPU/GPU).\n\n"
    "**Inputs:** the SFT policy, the fine-tuned estimator. **Outputs:** `runs/<profile>/grpo/policy`, "
    "`results/<profile>/train_log.csv` (loss, KL, reward and every component per step). Rerunning resumes from "
    "the last checkpoint.\n\n"
    "Runtime: ~1 min on `tiny`; see the README for `cpu` and `paper`.",
    [
        ("code", "from opgrpo_lib import train\n\ngrpo = train.run_grpo(cfg, paths)"),
        (
            "code",
            'cols = [c for c in grpo["log"].columns if c.startswith("op_reward/") or c in ("step", "loss", "kl")]\n'
            'grpo["log"][cols].tail(10)',
        ),
        ("code", 'from opgrpo_lib.figures import fig_training_dynamics\n\nfig_training_dynamics(grpo["log"])'),
    ],
)

notebook(
    "05_generate",
    "05 · Generation",
    "Outputs of every configured system (OP-GRPO, SFT, base model with implicit and explicit prompts, ModPlural) "
    "for the evaluation splits, plus the prompt-style rewordings; temperature 0.7, top-p 0.9. Retries on invalid "
    "layouts are a setting (`generate.retries`, off by default) and are reported with every result.\n\n"
    "**Outputs:** `runs/<profile>/generate/<system>/<split>.jsonl` (resumable) and `outputs.parquet`.",
    [
        ("code", "from opgrpo_lib import generate\n\noutputs = generate.run(cfg, paths)"),
        (
            "code",
            'outputs.groupby(["system", "split"]).agg(rows=("prompt", "size"), valid_format=("valid_format", "mean"))',
        ),
        ("code", 'print(outputs.iloc[0]["text"][:1500])'),
    ],
)

notebook(
    "06_evaluate",
    "06 · Evaluation",
    "SBERT coverage (relative / absolute accuracy, the authors' logged metric) with an evaluator different from the "
    "reward's estimator, the NLI Overton benchmark (Accuracy@0.33; skipped with a plain statement where no NLI model "
    "exists), token efficiency, paired bootstrap comparisons and the optional LLM judge.\n\n"
    "**Outputs:** `results/<profile>/eval/{metrics.csv,comparisons.csv,eval_summary.json,*_per_sample.parquet}`.",
    [
        ("code", 'from opgrpo_lib import evaluate\n\nev = evaluate.run(cfg, paths)\nev["summary"]'),
        (
            "code",
            'm = ev["metrics"]\nm[m.metric == "sbert"][["system", "split", "n", "relative_accuracy", "absolute_accuracy"]]',
        ),
        ("code", 'ev["comparisons"]'),
    ],
)

notebook(
    "07_figures_and_tables",
    "07 · Figures and tables",
    "Every figure and table from the files under `results/<profile>/` (no torch, no model): main coverage table, "
    "coverage vs number of perspectives, training dynamics, estimator ablation, core vs summary, token efficiency, "
    "LLM judge, headline gains next to the paper's claims, each beside the authors' logged numbers where they exist.\n\n"
    "**Outputs:** `figures/<profile>/` (PNG + PDF, tables as CSV + Markdown + LaTeX, `INDEX.md`). Runs on Binder.",
    [
        ("code", "from opgrpo_lib import figures\n\nfigs = figures.run(cfg, paths)"),
        (
            "code",
            "from pathlib import Path\nfrom IPython.display import Markdown, display\n\n"
            'display(Markdown((Path(figs["out_dir"]) / "INDEX.md").read_text()))',
        ),
        (
            "code",
            "from IPython.display import Image\n\n"
            'for png in sorted(Path(figs["out_dir"]).glob("*.png")):\n    display(Image(filename=str(png)))',
        ),
    ],
)
