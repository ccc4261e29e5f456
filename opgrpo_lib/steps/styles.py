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
from ..generate import generate_rows, job_key, lazy, policy_fn, rows_made_under
from ..lifecycle import rank0, step_run
from ..lm import load, resolve_policy
from ..reward import CachedEncoder, SentenceEncoder
from ..runs import RunPaths, atomic_write_text


def run(cfg: RunConfig, paths: RunPaths, progress: bool = True, force: bool = False) -> dict[str, Any] | None:
    """``results/styles/``: ``generations.jsonl`` (every output), ``per_sample.csv`` (the evaluator's score of
    each), ``summary.csv`` (per condition and system), ``comparisons.csv`` (paired differences with CI and the
    minimum detectable effect), ``verdicts.csv`` (the pre-registered reading) and ``settings.json``; where an NLI
    model loads, the same three under the NLI protocol (``nli_per_sample.csv``, ``nli_summary.csv``,
    ``nli_comparisons.csv``; settings.json says which ran and why not)."""
    if not cfg.styles.styles or not rank0():
        return None
    out = paths.results / "styles"
    with step_run(cfg, paths, "styles", force) as step:
        if step.done and (out / "summary.csv").exists():
            return {**_read_tables(out), "skipped": True}
        _, ev = load_prepared(paths.data)
        zh = _chinese(cfg, paths)
        items = {"en": st.items(ev, cfg), "zh": list(zip(zh[0]["prompt"], zh[0]["split"])) if zh else []}
        order, device = st.conditions(cfg), resolve_device(cfg)
        out_dir = step.begin()
        outputs = _generate(cfg, paths, items, order, out_dir, device, step, progress, zh)
        with step.timed("score"):
            per = _score(cfg, ev, items, outputs, zh, device)
        with step.timed("nli"):
            per_nli, nli_status = _score_nli(cfg, ev, outputs, zh, device, progress)
        summary, comps = st.tables(per, order, cfg, validated=bool(zh and zh[1]["validated"]))
        verdicts = st.verdicts(summary, comps, cfg.styles.systems[0], *st.baselines(cfg))
        frames = {"per_sample": per, "summary": summary, "comparisons": comps, "verdicts": verdicts}
        if per_nli is not None:
            nli_tables = st.tables(per_nli, order, cfg, bool(zh and zh[2].get("validated")), value="score")
            frames |= dict(zip(NLI_FILES, (per_nli, *nli_tables)))
        for name in NLI_FILES:
            (out / f"{name}.csv").unlink(missing_ok=True)  # a rerun without NLI leaves no stale NLI table
        atomic_write_text(out / "generations.jsonl", outputs.to_json(orient="records", lines=True, force_ascii=False))
        for name, frame in frames.items():
            atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
        settings = _settings(cfg, order, items, zh) | {"nli": nli_status}
        atomic_write_text(out / "settings.json", json.dumps(settings, indent=2))
        step.extra = {"outputs": len(outputs), "conditions": len(order)}
    return {"summary": summary, "comparisons": comps, "verdicts": verdicts, "nli_summary": frames.get("nli_summary")}


NLI_FILES = ("nli_per_sample", "nli_summary", "nli_comparisons")


def _read_tables(out) -> dict[str, pd.DataFrame | None]:
    """What :func:`run` returns, read back from a finished step's tables."""
    names = ("summary", "comparisons", "verdicts", "nli_summary")
    return {n: pd.read_csv(out / f"{n}.csv") if (out / f"{n}.csv").exists() else None for n in names}


def _chinese(cfg: RunConfig, paths: RunPaths) -> tuple[pd.DataFrame, dict, dict] | None:
    """(translations, SBERT calibration, NLI check) of the translate step when the Chinese arm is on."""
    if "zh" not in cfg.styles.languages:
        return None
    from ..chinese import load_translations

    translations = load_translations(paths.root)  # names `opgrpo translate` when it has not run
    report = json.loads((paths.root / "translate" / "report.json").read_text())
    return translations, report["calibration"], report.get("nli_calibration", {})


def _score(cfg, ev, items, outputs, zh, device) -> pd.DataFrame:
    """Per-situation scores: English outputs under the independent evaluator at its threshold, Chinese ones under
    the multilingual evaluator at its calibrated threshold."""
    columns = {s.name: s.score_column for s in st.systems(cfg)}
    lang = outputs["condition"].map({c.label: c.language for c in st.conditions(cfg)})
    encoder = CachedEncoder(SentenceEncoder(cfg.models.eval_encoder, device=device))
    refs = ev[ev["prompt"].isin({p for p, _ in items["en"]})]
    frames = [st.per_sample(outputs[lang == "en"], refs, encoder, cfg.eval.sbert_thresholds[0], columns)]
    if zh:
        translations, calibration, _ = zh
        threshold = calibration["zh_threshold"] or cfg.eval.sbert_thresholds[0]
        zh_encoder = CachedEncoder(SentenceEncoder(cfg.translate.zh_evaluator, device=device))
        frames.append(st.per_sample_zh(outputs[lang == "zh"], translations, zh_encoder, threshold, columns))
    return pd.concat(frames, ignore_index=True)


def _score_nli(cfg, ev, outputs, zh, device, progress) -> tuple[pd.DataFrame | None, dict[str, str]]:
    """Per-situation NLI scores (English outputs under ``models.nli`` against the English explanations, Chinese
    ones under ``translate.zh_nli`` against the translated ones, split at Chinese sentence ends) and, per language,
    whether its model ran or why not."""
    from ..chinese import split_sentences_zh
    from ..evaluate import split_output_sentences
    from ..nli import load_nli

    lang = outputs["condition"].map({c.label: c.language for c in st.conditions(cfg)})
    arms = {"en": (cfg.models.nli, dict(zip(ev["prompt"], ev["perspectives"])), split_output_sentences)}
    if zh:
        arms["zh"] = (cfg.translate.zh_nli, dict(zip(zh[0]["prompt"], zh[0]["references_zh"])), split_sentences_zh)
    frames, status = [], {}
    for language, (name, references, split) in arms.items():
        cells = outputs[lang == language]
        model, status[language] = load_nli(name, device, cfg.eval.nli_batch_size)
        if model is None or cells.empty:
            continue
        premises = {p: [r["explanation"] for r in references[p]] for p in set(cells["prompt"]) if p in references}
        frames.append(st.per_sample_nli(cells, premises, model, cfg.eval.nli_text, split, progress))
    return (pd.concat(frames, ignore_index=True) if frames else None), status


def _generate(cfg, paths, items, order, out_dir, device, step, progress, zh) -> pd.DataFrame:
    """Every (condition, system) job, resumed by key; the English control reuses step 05's rows of that key. The
    Chinese conditions show each situation's translation (its seed stays the English situation's)."""
    shown = dict(zip(zh[0]["prompt"], zh[0]["situation_zh"])) if zh else {}
    frames = []
    for system in st.systems(cfg):
        model = _once(lambda system=system: load(resolve_policy(system.policy, cfg, paths.root), device))
        for cond in st.conditions_of(cfg, system.name, order):
            template, message = st.template(cfg, system, cond), st.system_message(cond)
            zh_text = shown if cond.language == "zh" else None
            variant = (() if message is None else (message,)) + (() if zh_text is None else (sorted(zh_text.items()),))
            key, name = job_key(cfg, system, template, *variant), f"{system.name}@{cond.label}"
            path = out_dir / f"{name}.jsonl"
            if template is None and message is None and not path.exists():
                reused, _ = rows_made_under(paths.root / "generate" / f"{system.name}.jsonl", key)  # read only
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in reused.values()))
            fn = lazy(
                lambda system=system, template=template, message=message, zh_text=zh_text, model=model: policy_fn(
                    system, cfg, paths.root, device, template, message, zh_text, model()
                )
            )
            with step.timed(name):
                rows = generate_rows(fn, items[cond.language], name, cond.label, cfg.generate, path, key, progress)
            frames.append(rows.assign(system=system.name, condition=cond.label, prompt_style=cond.label))
    return pd.concat(frames, ignore_index=True)


def _once(factory):
    """``factory()`` on the first call only (a system's policy, loaded once for all its conditions, and not at all
    when every row is reused)."""
    made = []

    def get():
        if not made:
            made.append(factory())
        return made[0]

    return get


def _settings(cfg: RunConfig, order: list[st.Condition], items: dict, zh) -> dict[str, Any]:
    return {
        "conditions": [c.label for c in order],
        "templates": {
            c.label: st.style_template(c.style, c.language, cfg.styles.custom) for c in order if c.mode == "default"
        },
        "system_messages": {c.label: st.system_message(c) for c in order},
        "systems": cfg.styles.systems,
        "mode_systems": cfg.styles.mode_systems or cfg.styles.systems,
        "situations": {lang: len(rows) for lang, rows in items.items() if rows},
        "split_rows": cfg.styles.split_rows,
        "evaluator": cfg.models.eval_encoder,
        "threshold": cfg.eval.sbert_thresholds[0],
        "retention_min": st.RETENTION_MIN,
        "chinese": None
        if not zh
        else {
            "evaluator": cfg.translate.zh_evaluator,
            "calibration": zh[1],
            "nli": cfg.translate.zh_nli,
            "nli_calibration": zh[2],
        },
    }
