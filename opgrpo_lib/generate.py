"""Step 05: outputs for the evaluation splits from any policy (base, SFT, OP-GRPO; adapter or merged) and the
ModPlural baseline. Batched, resumable (a rerun reuses the rows made under the same fingerprint), with a progress
bar; per-row sampling seeds (``lm.row_seed``) make a row's output independent of its batch and of other systems."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from . import lm
from .config import GenerateCfg, RunConfig, SystemCfg
from .progress import emit as progress_emit
from .prompts import MODPLURAL_INTEGRATOR, render
from .runs import atomic_write_text
from .text import check_layout

RECORD_COLUMNS = [
    "prompt",
    "split",
    "system",
    "prompt_style",
    "text",
    "core",
    "summary",
    "valid_format",
    "attempts",
    "fingerprint",
]


def _record(prompt: str, split: str, system: str, style: str, text: str, attempts: int, key: str) -> dict[str, Any]:
    layout = check_layout(text)
    return {
        "prompt": prompt,
        "split": split,
        "system": system,
        "prompt_style": style,
        "text": text,
        "core": layout.core,
        "summary": layout.summary,
        "valid_format": layout.valid,
        "attempts": attempts,
        "fingerprint": key,
    }


def rows_made_under(path: Path, key: str) -> tuple[dict[str, dict], int]:
    """(rows of ``path`` made under ``key`` by situation, count of other lines: other settings or cut by a crash);
    reads only."""
    if not path.exists():
        return {}, 0
    rows, stale = {}, 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            stale += 1
            continue
        if rec.get("fingerprint") == key:
            rows[rec["prompt"]] = rec
        else:
            stale += 1
    return rows, stale


def done_rows(path: Path, key: str) -> dict[str, dict]:
    """Finished rows of ``path`` made under ``key``; rows made with other settings or another policy are dropped
    from the file (a line cut by a crash is dropped too, so that row is generated again)."""
    rows, stale = rows_made_under(path, key)
    if stale:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows.values()))
    return rows


def generate_rows(
    generate_fn,
    items: list[tuple[str, str]],
    system: str,
    style: str,
    gen: GenerateCfg,
    out_jsonl: Path,
    key: str,
    progress: bool = True,
) -> pd.DataFrame:
    """One output per (situation, split) item, batched across splits and resumed from ``out_jsonl``: a rerun reuses
    the rows made under the same ``key`` (settings + policy fingerprint) and regenerates the others. Invalid layouts
    are resampled up to ``gen.retries`` more times. ``generate_fn(situations, attempt) -> texts``."""
    from tqdm.auto import tqdm

    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    done = done_rows(out_jsonl, key)
    todo = [(s, split) for s, split in items if s not in done]
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=system, disable=not progress)
    with open(out_jsonl, "a") as fh:
        for start in range(0, len(todo), gen.batch_size):
            batch = todo[start : start + gen.batch_size]
            situations = [s for s, _ in batch]
            texts = generate_fn(situations, 0)
            attempts = [1] * len(batch)
            for retry in range(1, gen.retries + 1):
                bad = [i for i, t in enumerate(texts) if not check_layout(t).valid]
                if not bad:
                    break
                again = generate_fn([situations[i] for i in bad], retry)
                for i, t in zip(bad, again):
                    texts[i], attempts[i] = t, attempts[i] + 1
            for (s, split), t, a in zip(batch, texts, attempts):
                rec = _record(s, split, system, style, t, a, key)
                done[s] = rec
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            bar.update(len(batch))
            progress_emit(f"generate {system}", bar.n, len(items))
    bar.close()
    return pd.DataFrame([done[s] for s, _ in items], columns=RECORD_COLUMNS)


NUCLEUS_TOP_K = 512  # candidates sorted per row; a row whose nucleus is wider falls back to the full sort


def _row_tokens(scores, generators: list, temperature: float, top_p: float):
    """The token :class:`lm.RowSampler` + argmax picks for each row (the same draws from each row's generator), but
    sorting only the top ``NUCLEUS_TOP_K`` scores and taking Gumbel noise only where the nucleus keeps a token."""
    import torch

    if temperature <= 0:
        return scores.argmax(dim=-1)
    scores = scores.float() / temperature
    u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in generators]).to(scores.device)
    if top_p >= 1.0:
        return (scores - torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))).argmax(dim=-1)
    k = min(NUCLEUS_TOP_K, scores.shape[-1])
    top, idx = scores.topk(k, dim=-1)
    probs = torch.softmax(scores, dim=-1).gather(-1, idx)
    cum = probs.cumsum(dim=-1)
    keep = cum - probs < top_p
    keep[:, 0] = True
    gumbel = -torch.log(-torch.log(u.gather(-1, idx).clamp_(1e-20, 1.0 - 1e-7)))
    picked = idx.gather(-1, (top + gumbel).masked_fill(~keep, float("-inf")).argmax(dim=-1, keepdim=True))[:, 0]
    wide = (cum[:, -1] < top_p).nonzero()[:, 0]  # the nucleus may extend past the k candidates: sort the whole row
    if len(wide):
        ws = scores[wide]
        sorted_scores, order = torch.sort(ws, descending=True, dim=-1)
        p_sorted = torch.softmax(sorted_scores, dim=-1)
        drop = p_sorted.cumsum(dim=-1) - p_sorted >= top_p
        drop[:, 0] = False
        ws = ws.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        picked[wide] = (ws - torch.log(-torch.log(u[wide].clamp_(1e-20, 1.0 - 1e-7)))).argmax(dim=-1)
    return picked


def sample_compact(
    model_lm: lm.LM,
    messages: list[str],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seeds: list[int],
    system: str | None = None,
) -> list[str]:
    """:func:`lm.sample` (chat template, per-row seeds) with a decoding loop that drops each row from the batch and
    its KV cache once it has ended, and samples with :func:`_row_tokens`: the same texts with less work per token
    (``tests/test_generate.py`` checks the texts on the tiny LM; ``benchmarks/generate_speed.py`` checks them and
    prints the time ratio for a real policy: 48 rows of the cpu SFT policy, identical, 1.79x)."""
    import torch

    tok, model = model_lm.tokenizer, model_lm.model
    texts = lm.chat_prompts(tok, messages, system)
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop if stop is not None else tok.eos_token_id])
    generators = [torch.Generator().manual_seed(s) for s in seeds] if temperature > 0 else []
    mask = enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    rows = list(range(len(texts)))  # the original row of each live batch row
    new_tokens: list[list[int]] = [[] for _ in texts]
    with torch.inference_mode():
        out = model(
            input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        cache, last = out.past_key_values, positions[:, -1:]
        for step in range(max_new_tokens):
            picked = _row_tokens(out.logits[:, -1, :].float(), generators, temperature, top_p)
            live = []
            for i, t in enumerate(picked.tolist()):
                new_tokens[rows[i]].append(t)
                if t not in stop:
                    live.append(i)
            if not live or step == max_new_tokens - 1:
                break
            if len(live) < len(rows):
                keep = torch.tensor(live, device=mask.device)
                cache.batch_select_indices(keep)
                mask, last, picked = mask[keep], last[keep], picked[keep]
                rows = [rows[i] for i in live]
                generators = [generators[i] for i in live] if generators else []
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
            last = last + 1
            out = model(
                input_ids=picked[:, None],
                attention_mask=mask,
                position_ids=last,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
    return tok.batch_decode(new_tokens, skip_special_tokens=True)


def modplural_fn(cfg: RunConfig, device: str | None):
    """Modular Pluralism: each community LM comments on the bare situation; the integrator answers with the
    original ModPlural prompt. With ``community_system_prompts`` (offline variant) the base model is steered by
    one system prompt per community instead of LoRA adapters."""
    from .models import resolve

    mp = cfg.generate.modplural
    communities = (
        [(None, p) for p in mp.community_system_prompts]
        if mp.community_system_prompts
        else [(a, None) for a in mp.community]
    )
    base_path = resolve(mp.base)
    integrator = lm.load(resolve(mp.integrator), device)
    base = lm.load(base_path, device) if any(a is None for a, _ in communities) else None

    def fn(situations: list[str], attempt: int) -> list[str]:
        passages = [[] for _ in situations]
        for k, (adapter, system) in enumerate(communities):
            model = lm.load(base_path, device, adapter=adapter) if adapter else base
            seeds = [lm.row_seed(cfg.seed, s, 1000 * (k + 1) + attempt) for s in situations]
            outs = lm.sample(
                model, situations, mp.community_max_new_tokens, mp.community_temperature, 0.9, system, seeds
            )
            for i, o in enumerate(outs):
                passages[i].append(o.strip())
        prompts = [
            MODPLURAL_INTEGRATOR.format(
                situation=s, passages="\n\n".join(f"Passage {j + 1}: {p}" for j, p in enumerate(ps))
            )
            for s, ps in zip(situations, passages)
        ]
        seeds = [lm.row_seed(cfg.seed, s, attempt) for s in situations]
        return lm.sample(
            integrator, prompts, mp.integrator_max_new_tokens, mp.integrator_temperature, 0.9, None, seeds
        )

    return fn


def policy_fn(
    system: SystemCfg,
    cfg: RunConfig,
    root: Path,
    device: str | None,
    template: str | None = None,
    system_message: str | None = None,
    situation_text: dict[str, str] | None = None,
    model: lm.LM | None = None,
):
    """``fn(situations, attempt)``: one sampled output per situation from the system's policy (``model`` when
    already loaded) and prompt (or ``template``), under the chat template's default system turn (None) or
    ``system_message`` ("" included). The seed follows the situation's key; ``situation_text`` maps a key to the
    text put in the prompt (a translation)."""
    model = model or lm.load(lm.resolve_policy(system.policy, cfg, root), device)
    gen = cfg.generate
    template = template or system.prompt
    shown = situation_text or {}

    def fn(situations: list[str], attempt: int) -> list[str]:
        seeds = [lm.row_seed(cfg.seed, s, attempt) for s in situations]
        msgs = [render(template, shown.get(s, s)) for s in situations]
        return sample_compact(model, msgs, gen.max_new_tokens, gen.temperature, gen.top_p, seeds, system_message)

    return fn


def lazy(factory):
    """A generate function that loads its model on the first call only (no load when every row is reused)."""
    loaded = []

    def fn(situations: list[str], attempt: int) -> list[str]:
        if not loaded:
            loaded.append(factory())
        return loaded[0](situations, attempt)

    return fn


def job_key(cfg: RunConfig, system: SystemCfg, template: str | None, *variant: Any) -> str:
    """Fingerprint of one system's outputs: sampling settings, prompt, policy identity, seed and generation code
    (and ``variant``: a system message, the translated situations; none for step 05's own jobs)."""
    from .keys import code_hash, value_key

    g = cfg.generate
    # no batch size: per-row seeded sampling (lm.sample) gives the same row in any batch
    sampling = {
        "temperature": g.temperature,
        "top_p": g.top_p,
        "max_new_tokens": g.max_new_tokens,
        "retries": g.retries,
    }
    mp = dataclasses.asdict(g.modplural) if system.kind == "modplural" else None
    return value_key(
        dataclasses.asdict(system),
        template,
        sampling,
        mp,
        lm.policy_identity(system.policy, cfg),
        cfg.seed,
        cfg.device,
        code_hash("generate"),
        *variant,
    )


def eval_items(ev: pd.DataFrame, gen: GenerateCfg, split_rows: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(situation, split) for the configured splits, the first ``split_rows[split]`` (a system's own, else
    ``gen.split_rows``, else ``rows_per_split``) of each in evaluation order."""
    rows = {**gen.split_rows, **(split_rows or {})}
    return first_rows(ev, {split: rows.get(split, gen.rows_per_split) for split in gen.splits})


def first_rows(ev: pd.DataFrame, rows: dict[str, int | None]) -> list[tuple[str, str]]:
    """(situation, split): the first ``rows[split]`` situations of each split (all of it for None), in evaluation
    order, splits in ``rows``' order."""
    items = []
    for split, n in rows.items():
        part = ev[ev["split"] == split]["prompt"].tolist()
        items += [(p, split) for p in (part[:n] if n is not None else part)]
    return items
