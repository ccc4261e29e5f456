"""Prompt-style generalisation (notebook 05, after the generation, when ``styles.styles`` is set): every style and
system-message mode for op_grpo, sft and the base model on the same held-out situations, scored by the
independent evaluator, read by the pre-registered rules of ``opgrpo_lib/styles.py``."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .. import styles as st
from ..config import RunConfig
from ..data import load_prepared
from ..device import resolve_device
from ..generate import generate_rows, job_key, lazy, policy_fn
from ..lifecycle import rank0, step_run
from ..reward import CachedEncoder, SentenceEncoder
from ..runs import RunPaths, atomic_write_text


def run(cfg: RunConfig, paths: RunPaths, progress: bool = True, force: bool = False) -> dict[str, Any] | None:
    """``results/styles/``: ``generations.jsonl`` (every output), ``per_sample.csv`` (the evaluator's score of
    each), ``summary.csv`` (per condition and system), ``comparisons.csv`` (paired differences with CI and the
    minimum detectable effect), ``verdicts.csv`` (the pre-registered reading) and ``settings.json``."""
    if not cfg.styles.styles or not rank0():
        return None
    out = paths.results / "styles"
    with step_run(cfg, paths, "styles", force) as step:
        if step.done and (out / "summary.csv").exists():
            return {"summary": pd.read_csv(out / "summary.csv"), "skipped": True}
        _, ev = load_prepared(paths.data)
        items, order = st.items(ev, cfg), st.conditions(cfg)
        device = resolve_device(cfg)
        out_dir = step.begin()
        outputs = _generate(cfg, paths, items, order, out_dir, device, step, progress)
        with step.timed("score"):
            refs = ev[ev["prompt"].isin({p for p, _ in items})]
            encoder = CachedEncoder(SentenceEncoder(cfg.models.eval_encoder, device=device))
            columns = {s.name: s.score_column for s in st.systems(cfg)}
            per = st.per_sample(outputs, refs, encoder, cfg.eval.sbert_thresholds[0], columns)
        reps, ref = cfg.styles.bootstrap_reps, cfg.styles.systems[0]
        summary = st.summarize(per, order, reps, cfg.seed)
        comps = st.comparisons(per, order, ref, reps, cfg.seed)
        verdicts = st.verdicts(summary, comps, ref, *_baselines(cfg))
        atomic_write_text(out / "generations.jsonl", outputs.to_json(orient="records", lines=True, force_ascii=False))
        for name, frame in (("per_sample", per), ("summary", summary), ("comparisons", comps), ("verdicts", verdicts)):
            atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
        atomic_write_text(out / "settings.json", json.dumps(_settings(cfg, order, items), indent=2))
        step.extra = {"outputs": len(outputs), "conditions": len(order)}
    return {"summary": summary, "comparisons": comps, "verdicts": verdicts}


def _generate(cfg, paths, items, order, out_dir, device, step, progress) -> pd.DataFrame:
    """Every (condition, system) job, resumed by key; the English control reuses step 05's rows of that key."""
    frames = []
    for system in st.systems(cfg):
        for cond in order:
            template, message = st.template(cfg, system, cond), st.system_message(cond)
            variant = () if message is None else (message,)
            key, name = job_key(cfg, system, template, *variant), f"{system.name}@{cond.label}"
            path = out_dir / f"{name}.jsonl"
            if template is None and message is None and not path.exists():
                reused = st.rows_with_key(paths.root / "generate" / f"{system.name}.jsonl", key)
                atomic_write_text(path, "".join(line + "\n" for line in reused))
            fn = lazy(
                lambda system=system, template=template, message=message: policy_fn(
                    system, cfg, paths.root, device, template, message
                )
            )
            with step.timed(name):
                rows = generate_rows(fn, items, name, cond.label, cfg.generate, path, key, progress)
            frames.append(rows.assign(system=system.name, condition=cond.label, prompt_style=cond.label))
    return pd.concat(frames, ignore_index=True)


def _baselines(cfg: RunConfig) -> tuple[str, str]:
    """(base, sft) of the verdicts: the systems of ``styles.systems`` that generate from the base policy / SFT."""
    by_policy = {s.policy: s.name for s in st.systems(cfg)}
    return by_policy.get("policy", ""), by_policy.get("run:sft", "")


def _settings(cfg: RunConfig, order: list[st.Condition], items: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "conditions": [c.label for c in order],
        "templates": {
            c.label: st.style_template(c.style, c.language, cfg.styles.custom) for c in order if c.mode == "default"
        },
        "system_messages": {c.label: st.system_message(c) for c in order},
        "systems": cfg.styles.systems,
        "situations": len(items),
        "split_rows": cfg.styles.split_rows,
        "evaluator": cfg.models.eval_encoder,
        "threshold": cfg.eval.sbert_thresholds[0],
        "retention_min": st.RETENTION_MIN,
    }
