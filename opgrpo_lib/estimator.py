"""Step 02: the similarity estimator — triplet mining with pluggable judges, fine-tuning with
sentence-transformers' own trainer (MultipleNegativesRankingLoss), evaluation base vs fine-tuned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .config import RunConfig
from .runs import RunPaths, atomic_write_text
from .text import keywords, mask_sentence

JUDGE_PROMPT = (
    "Determine if the following sentence pair expresses the *same* meaning or perspective. Respond strictly with "
    "'Yes' or 'No'.\n\nSentence A: {a}\nSentence B: {b}\nAnswer:"
)


# ---------------------------------------------------------------- judges
class PairJudge(Protocol):
    name: str

    def same(self, pairs: Sequence[tuple[str, str, str, str]]) -> list[bool]:
        """For (name_a, sentence_a, name_b, sentence_b) pairs: do they express the same meaning or perspective?"""


class NameJudge:
    """Offline judge (documented deviation): two perspectives are "the same" when their names match
    (case-insensitive). Needs no model; works wherever the data's perspective names are known."""

    name = "names"

    def same(self, pairs):
        return [a.strip().lower() == b.strip().lower() for a, _, b, _ in pairs]


class LLMJudge:
    """The paper's judge: a causal LM (paper: Qwen3-8B) on the raw prompt, greedy, 10 new tokens, one vote;
    "yes" anywhere in the text after the last "Answer:" (up to the newline) means the same."""

    name = "llm"

    def __init__(self, model_id: str, device: str | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .models import resolve

        path = resolve(model_id)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        if device:
            self.model.to(device)
        self.batch_size = batch_size

    @staticmethod
    def verdict(text: str) -> bool:
        tail = text.rsplit("Answer:", 1)[-1].strip().split("\n", 1)[0]
        return "yes" in tail.lower()

    def same(self, pairs):
        import torch
        from tqdm.auto import tqdm

        prompts = [JUDGE_PROMPT.format(a=a, b=b) for _, a, _, b in pairs]
        out = []
        for start in tqdm(
            range(0, len(prompts), self.batch_size), desc="LLM judge", disable=len(prompts) <= 4 * self.batch_size
        ):
            batch = prompts[start : start + self.batch_size]
            enc = self.tok(batch, return_tensors="pt", padding=True).to(self.model.device)
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, do_sample=False, max_new_tokens=10, pad_token_id=self.tok.pad_token_id
                )
            texts = self.tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [self.verdict("Answer:" + t) for t in texts]
        return out


# ---------------------------------------------------------------- mining
@dataclass
class MiningReport:
    judge: str
    situations: int = 0
    triplets: int = 0
    within_situation: int = 0
    across_situations: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    judge_calls: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _situation_items(row: Any) -> tuple[list[str], list[str]]:
    persp = list(row["perspectives"])
    return [p["name"] for p in persp], [p["explanation"] for p in persp]


def mine_triplets(
    frame: pd.DataFrame, encoder: Any, judge: PairJudge, threshold: float = 0.75, cross_situation: bool = True
) -> tuple[pd.DataFrame, MiningReport]:
    """One (anchor, positive, negative) per situation, the authors' rule with batched judging:

    candidate pairs (i < j) of a situation's prefix-stripped perspective sentences whose keyword-masked
    cosine is ≥ ``threshold``, most similar first; the first pair the judge confirms gives (anchor, positive);
    the hard negative is the first sentence, in descending cosine to the anchor, the judge rejects. Judging
    goes in rounds (round r asks every undecided situation about its r-th candidate), so each round is one
    batched judge call and the result equals the sequential scan.

    With ``cross_situation`` (name judge only) a situation without a confirmed pair takes as positive the most
    similar same-name perspective of another situation (documented deviation).
    """
    report = MiningReport(judge.name)
    sits = []
    for row in frame.to_dict("records"):
        report.situations += 1
        names, sents = _situation_items(row)
        if len(sents) < 2:
            report.skip("fewer than 2 sentences")
            continue
        kws = keywords(row["prompt"])
        sits.append(
            {"prompt": row["prompt"], "names": names, "sents": sents, "masked": [mask_sentence(s, kws) for s in sents]}
        )
    if not sits:
        return pd.DataFrame(columns=["prompt", "anchor", "positive", "negative"]), report

    flat = [m for s in sits for m in s["masked"]]
    emb = encoder.encode(flat).astype(np.float64)
    offset = 0
    for s in sits:
        n = len(s["sents"])
        e = emb[offset : offset + n]
        s["emb"] = e
        offset += n
        sim = e @ e.T
        iu = np.triu_indices(n, k=1)
        keep = sim[iu] >= threshold
        order = np.argsort(-sim[iu][keep], kind="stable")
        s["pairs"] = [(int(iu[0][keep][k]), int(iu[1][keep][k])) for k in order]
        s["sim"] = sim

    def rounds(items: list[dict], candidates_key: str, make_pair) -> None:
        """Ask the judge about each item's next candidate until one answers as wanted (item['found'])."""
        r = 0
        while True:
            active = [it for it in items if it["found"] is None and r < len(it[candidates_key])]
            if not active:
                return
            pairs = [make_pair(it, it[candidates_key][r]) for it in active]
            verdicts = judge.same(pairs)
            report.judge_calls += len(pairs)
            for it, v in zip(active, verdicts):
                if v == it["want"]:
                    it["found"] = it[candidates_key][r]
            r += 1

    # positives: first confirmed pair
    for s in sits:
        s["found"], s["want"] = None, True
    rounds(sits, "pairs", lambda s, ij: (s["names"][ij[0]], s["sents"][ij[0]], s["names"][ij[1]], s["sents"][ij[1]]))

    # cross-situation positives for the name judge (same perspective name elsewhere)
    if cross_situation and judge.name == "names":
        by_name: dict[str, list[tuple[int, int]]] = {}
        for si, s in enumerate(sits):
            for k, nm in enumerate(s["names"]):
                by_name.setdefault(nm.strip().lower(), []).append((si, k))
        for si, s in enumerate(sits):
            if s["found"] is not None:
                s["kind"] = "within"
                continue
            best = None
            for k, nm in enumerate(s["names"]):
                others = [(sj, kk) for sj, kk in by_name[nm.strip().lower()] if sj != si]
                for sj, kk in others:
                    c = float(s["emb"][k] @ sits[sj]["emb"][kk])
                    if best is None or c > best[0]:
                        best = (c, k, sj, kk)
            if best is not None:
                s["found"], s["cross_positive"], s["kind"] = (best[1], None), sits[best[2]]["sents"][best[3]], "across"
    for s in sits:
        s.setdefault("kind", "within")

    # negatives: first rejected sentence in descending cosine to the anchor
    with_pos = []
    for s in sits:
        if s["found"] is None:
            report.skip("no pair >= threshold" if not s["pairs"] else "judge confirmed no pair")
            continue
        a, p = s["found"]
        s["anchor"], s["positive_idx"] = a, p
        s["negs"] = [int(k) for k in np.argsort(-s["sim"][a], kind="stable") if k not in (a, p)]
        s["found"], s["want"] = None, False
        with_pos.append(s)
    rounds(
        with_pos, "negs", lambda s, k: (s["names"][s["anchor"]], s["sents"][s["anchor"]], s["names"][k], s["sents"][k])
    )

    rows = []
    for s in with_pos:
        if s["found"] is None:
            report.skip("judge rejected no sentence")
            continue
        a = s["anchor"]
        pos = s["cross_positive"] if s["kind"] == "across" else s["sents"][s["positive_idx"]]
        rows.append({"prompt": s["prompt"], "anchor": s["sents"][a], "positive": pos, "negative": s["sents"][s["found"]],
                     "kind": s["kind"]})  # fmt: skip
    out = pd.DataFrame(rows, columns=["prompt", "anchor", "positive", "negative", "kind"])
    report.triplets = len(out)
    report.within_situation = int((out["kind"] == "within").sum())
    report.across_situations = int((out["kind"] == "across").sum())
    return out, report


def judge_agreement(
    frame: pd.DataFrame, encoder: Any, a: PairJudge, b: PairJudge, threshold: float, max_pairs: int
) -> dict:
    """How often two judges agree on the within-situation candidate pairs (cosine ≥ threshold) of ``frame``."""
    pairs = []
    for row in frame.to_dict("records"):
        names, sents = _situation_items(row)
        kws = keywords(row["prompt"])
        e = encoder.encode([mask_sentence(s, kws) for s in sents]).astype(np.float64)
        sim = e @ e.T
        for i in range(len(sents)):
            for j in range(i + 1, len(sents)):
                if sim[i, j] >= threshold:
                    pairs.append((names[i], sents[i], names[j], sents[j]))
        if len(pairs) >= max_pairs:
            break
    pairs = pairs[:max_pairs]
    if not pairs:
        return {"pairs": 0, "agreement": None}
    va, vb = a.same(pairs), b.same(pairs)
    agree = float(np.mean([x == y for x, y in zip(va, vb)]))
    return {
        "pairs": len(pairs),
        "agreement": agree,
        f"{a.name}_yes": float(np.mean(va)),
        f"{b.name}_yes": float(np.mean(vb)),
    }


# ---------------------------------------------------------------- fine-tuning
def finetune(
    triplets: pd.DataFrame, base: str, out_dir: Path, cfg: RunConfig, device: str | None = None
) -> Path:  # fmt: skip
    """MultipleNegativesRankingLoss (in-batch + hard negatives) with SentenceTransformerTrainer; no duplicates in a
    batch; checkpoints under ``out_dir/checkpoints`` and automatic resume; the final model in ``out_dir/model``."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers.trainer_utils import get_last_checkpoint

    from .models import resolve

    ec = cfg.estimator
    if len(triplets) < 2:
        raise ValueError(f"only {len(triplets)} triplets mined; cannot fine-tune (see the mining report)")
    model = SentenceTransformer(resolve(base), device=device)
    ds = Dataset.from_pandas(triplets[["anchor", "positive", "negative"]].reset_index(drop=True))
    ckpt = out_dir / "checkpoints"
    cuda = torch.cuda.is_available() and device != "cpu"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ckpt), num_train_epochs=ec.epochs, max_steps=ec.max_steps, per_device_train_batch_size=ec.batch_size,
        learning_rate=ec.learning_rate, warmup_steps=ec.warmup_ratio, fp16=cuda, bf16=False,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="steps", save_steps=ec.save_steps, save_total_limit=2,
        logging_steps=max(1, ec.save_steps // 5), report_to="none", seed=cfg.seed, use_cpu=not cuda,
        dataloader_drop_last=False, disable_tqdm=False,
    )  # fmt: skip
    loss = MultipleNegativesRankingLoss(model, scale=ec.scale)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss)
    last = get_last_checkpoint(str(ckpt)) if ckpt.exists() else None
    trainer.train(resume_from_checkpoint=last)
    final = out_dir / "model"
    model.save(str(final))
    atomic_write_text(out_dir / "train_log.json", json.dumps(trainer.state.log_history, indent=1))
    return final


# ---------------------------------------------------------------- evaluation
def triplet_similarities(encoder: Any, triplets: pd.DataFrame) -> pd.DataFrame:
    """cos(anchor, positive) and cos(anchor, negative) per triplet (one encode call for all distinct texts)."""
    texts = list(
        dict.fromkeys(triplets["anchor"].tolist() + triplets["positive"].tolist() + triplets["negative"].tolist())
    )
    emb = dict(zip(texts, encoder.encode(texts).astype(np.float64)))
    pos = [float(emb[a] @ emb[p]) for a, p in zip(triplets["anchor"], triplets["positive"])]
    neg = [float(emb[a] @ emb[n]) for a, n in zip(triplets["anchor"], triplets["negative"])]
    return pd.DataFrame({"sim_pos": pos, "sim_neg": neg})


def triplet_accuracy(sims: pd.DataFrame) -> float:
    return float((sims["sim_pos"] > sims["sim_neg"]).mean()) if len(sims) else float("nan")


def alignment_curve(sims: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """Reference-to-sentence alignment on held-out triplets: each anchor (reference) must be matched to its
    positive among {positive, negative}. At threshold t the greedy matcher picks the more similar candidate if it
    reaches t: precision = correct / matched, recall = correct / references."""
    rows = []
    for t in thresholds:
        best_is_pos = sims["sim_pos"] >= sims["sim_neg"]
        best = np.where(best_is_pos, sims["sim_pos"], sims["sim_neg"])
        matched = best >= t
        correct = matched & best_is_pos
        n_match = int(matched.sum())
        rows.append({"threshold": round(float(t), 4), "matched": n_match, "correct": int(correct.sum()),
                     "precision": float(correct.sum() / n_match) if n_match else float("nan"),
                     "recall": float(correct.sum() / len(sims)) if len(sims) else float("nan")})  # fmt: skip
    return pd.DataFrame(rows)


def plot_estimator(curves: pd.DataFrame, sims: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for model, part in curves.groupby("model", sort=False):
        ax.plot(part["threshold"], part["precision"], marker="o", label=f"precision ({model})")
        ax.plot(part["threshold"], part["recall"], marker="s", linestyle="--", label=f"recall ({model})")
    ax.set_xlabel("cosine threshold")
    ax.set_ylabel("alignment precision / recall")
    ax.set_title("Held-out reference-to-sentence alignment")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["calibration"] = out_dir / "calibration.png"
    fig.savefig(paths["calibration"], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, sims["model"].nunique(), figsize=(8, 3), sharey=True, squeeze=False)
    for ax, (model, part) in zip(axes[0], sims.groupby("model", sort=False)):
        bins = np.linspace(-0.2, 1.0, 31)
        ax.hist(part["sim_pos"], bins=bins, alpha=0.6, label="anchor–positive")
        ax.hist(part["sim_neg"], bins=bins, alpha=0.6, label="anchor–negative")
        ax.set_title(model)
        ax.set_xlabel("cosine")
    axes[0][0].set_ylabel("held-out triplets")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths["similarities"] = out_dir / "similarity_distributions.png"
    fig.savefig(paths["similarities"], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------- step 02
def resolve_estimator(cfg: RunConfig, paths: RunPaths) -> str:
    """The reward's estimator: ``run:estimator`` = the model fine-tuned by step 02, else a path / hub id."""
    from .models import resolve

    if cfg.reward.estimator == "run:estimator":
        path = paths.root / "estimator" / "model"
        if not (path / "modules.json").exists():
            raise FileNotFoundError(f"no fine-tuned estimator at {path}; run notebook 02_similarity_estimator first")
        return str(path)
    return resolve(cfg.reward.estimator)


def run(cfg: RunConfig, paths: RunPaths) -> dict[str, Any]:
    """Mine triplets from the training situations (a seeded held-out share kept apart), fine-tune, evaluate base
    vs fine-tuned; write ``runs/<profile>/estimator/`` and small results under ``results/<profile>/estimator/``."""
    from .data import load_prepared
    from .reward import SentenceEncoder
    from .runs import atomic_write_parquet, resolve_device, timed, write_manifest

    ec = cfg.estimator
    device = resolve_device(cfg)
    train, _ = load_prepared(paths.data)
    if ec.max_situations is not None:
        train = train.iloc[: ec.max_situations]
    held = train.sample(frac=ec.heldout_fraction, random_state=cfg.seed).sort_index()
    fit = train.drop(index=held.index)
    out_dir = paths.step("estimator")
    res_dir = paths.results / "estimator"
    res_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if ec.judge not in ("names", "llm"):
        raise ValueError(f"estimator.judge: expected 'names' or 'llm', got {ec.judge!r}")
    base = SentenceEncoder(cfg.models.encoder, device=device, batch_size=cfg.reward.batch_size)
    judge = NameJudge() if ec.judge == "names" else LLMJudge(ec.judge_model, device, ec.judge_batch_size)
    with timed(timings, "mine"):
        trip_fit, rep_fit = mine_triplets(fit, base, judge, ec.mining_threshold, ec.cross_situation)
        trip_held, rep_held = mine_triplets(held, base, judge, ec.mining_threshold, ec.cross_situation)
    atomic_write_parquet(trip_fit, out_dir / "triplets_train.parquet")
    atomic_write_parquet(trip_held, out_dir / "triplets_heldout.parquet")
    agreement = None
    if ec.agreement_pairs and ec.judge == "names":
        with timed(timings, "agreement"):
            other = LLMJudge(ec.judge_model, device, ec.judge_batch_size)
            agreement = judge_agreement(fit, base, judge, other, ec.mining_threshold, ec.agreement_pairs)
            agreement["llm_judge_model"] = ec.judge_model
    with timed(timings, "finetune"):
        final = finetune(trip_fit, cfg.models.encoder, out_dir, cfg, device)
    tuned = SentenceEncoder(str(final), device=device, batch_size=cfg.reward.batch_size)
    with timed(timings, "evaluate"):
        sims = pd.concat(
            [triplet_similarities(base, trip_held).assign(model="base"), triplet_similarities(tuned, trip_held).assign(model="fine-tuned")],
            ignore_index=True,
        )  # fmt: skip
        curves = pd.concat(
            [alignment_curve(part, ec.thresholds).assign(model=m) for m, part in sims.groupby("model", sort=False)],
            ignore_index=True,
        )
    metrics = {
        "profile": cfg.profile, "base_model": cfg.models.encoder, "judge": ec.judge,
        "judge_model": ec.judge_model if ec.judge == "llm" else None, "scale": ec.scale,
        "mining_threshold": ec.mining_threshold,
        "mining_train": rep_fit.__dict__, "mining_heldout": rep_held.__dict__, "judge_agreement": agreement,
        "heldout_triplets": len(trip_held), "train_triplets": len(trip_fit),
        "triplet_accuracy_base": triplet_accuracy(sims[sims.model == "base"]),
        "triplet_accuracy_finetuned": triplet_accuracy(sims[sims.model == "fine-tuned"]),
        "deviation": None if ec.judge == "llm" else (
            "offline name judge: same perspective name = same perspective (within a situation, else across "
            "situations); the paper confirms pairs with Qwen3-8B"
        ),
    }  # fmt: skip
    atomic_write_text(res_dir / "metrics.json", json.dumps(metrics, indent=2, default=float))
    atomic_write_text(res_dir / "calibration.csv", curves.to_csv(index=False))
    atomic_write_text(res_dir / "similarities.csv", sims.round(5).to_csv(index=False))
    plots = plot_estimator(curves, sims, res_dir)
    write_manifest(out_dir, "02_estimator", cfg, timings, inputs=[paths.data / "train.parquet"], results=paths.results)
    return {"metrics": metrics, "curves": curves, "plots": plots, "model": final}
