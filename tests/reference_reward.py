"""Straightforward per-rollout OP reward in the authors' shape (encode per rollout, iterative global argmax,
per-cell loops). Test oracle for the batched implementation; written independently of opgrpo_lib.reward."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

STRICT = re.compile(
    r"^\s*<core\s+perspectives>\s*(?P<core>.+?)\s*</core\s+perspectives>\s*<summary>\s*(?P<sum>.+?)\s*</summary>\s*$",
    re.I | re.S,
)
SPLIT = re.compile(r"(?:^|\n)(?=(?:From|In) the perspective of )", re.I)
NAME = re.compile(r"(?:^|\s)(?:From|In) the perspective of ([^,.\n]+)", re.I)


def sentences(text):
    return [p.strip() for p in SPLIT.split(text + "\n") if p.strip()]


def kw_set(text, stop):
    return {t for t in re.findall(r"\b\w+\b", text.lower()) if t not in stop and t.isalnum()}


def mask(sent, kws):
    return " ".join("[KW]" if t.lower() in kws else t for t in re.findall(r"\b\w+\b", sent))


def mutual_best_pairs(sim, thr):
    s = sim.astype(np.float64).copy()
    pairs = []
    while s.size and not np.all(np.isnan(s)):
        k = int(np.nanargmax(s))
        r, c = divmod(k, s.shape[1])
        if not s[r, c] >= thr:
            break
        if s[r, c] == np.nanmax(s[r]) and s[r, c] == np.nanmax(s[:, c]):
            pairs.append((r, c))
            s[r, :] = np.nan
            s[:, c] = np.nan
        else:
            s[r, c] = np.nan
    return pairs


def bucket(rate):
    if rate == 0:
        return 0
    if rate < 0.2:
        return 1
    if rate < 0.4:
        return 2
    if rate < 0.6:
        return 3
    if rate < 0.8:
        return 4
    return 5


def uniq_bucket(rate):
    return 1.0 if rate == 1.0 else 0.75 if rate > 0.8 else 0.4 if rate > 0.6 else 0.0


def fmt_score(text):
    m = re.search(r"<core\s+perspectives>\s*(.*?)\s*</core\s+perspectives>", text, re.I | re.S)
    core = m.group(1) if m else text
    m = re.search(r"<summary>\s*(.*?)\s*</summary>", text, re.I | re.S)
    summary = m.group(1) if m else text
    sents = sentences(core)
    persp = []
    for s in sents:
        m = NAME.search(s)
        if m:
            persp.append(m.group(1).strip().lower())
    fmt = 0
    if sents:
        frac = len(persp) / len(sents)
        fmt = 2 if frac >= 0.7 else (1 if frac >= 0.3 else 0)
    pen = 0.5 * (
        sum(v - 1 for v in Counter(s.lower() for s in sents).values() if v > 1)
        + sum(v - 1 for v in Counter(persp).values() if v > 1)
    )
    kw = 0.0
    if persp:
        r = sum(1 for p in persp if p in summary.lower()) / len(persp)
        kw = 0 if r >= 0.75 else (-0.5 if r >= 0.5 else (-0.75 if r >= 0.25 else -1))
    return max(fmt - pen + kw, 0)


def score_one(encode, stop, prompt_text, completion, reference, w_f=0.1, w_u=0.3, mask_refs=False, agree=()):
    """``mask_refs``: the references keyword-masked too; ``agree``: further encode functions under which a match
    must also clear 0.70 (the smallest cosine of the encoders decides)."""
    m = STRICT.match(completion)
    if m and m.group("core").strip() and m.group("sum").strip():
        tag, txt = 0.0, m.group("core")
    else:
        tag, txt = -0.2, completion.strip()
    kws = kw_set(prompt_text, stop)
    refs = sentences(reference)
    cands = [mask(s, kws) for s in sentences(txt)]
    # coverage (own encode calls, as the authors' worker does)
    ref_texts = [mask(s, kws) for s in refs] if mask_refs else refs
    if refs and cands:
        sims = [e(ref_texts).astype(np.float64) @ e(cands).astype(np.float64).T for e in (encode, *agree)]
        sim = sims[0]
        for other in sims[1:]:
            sim = np.where(other < sim, other, sim)
        rate = len(mutual_best_pairs(sim, 0.70)) / len(refs)
    else:
        rate = 0.0
    # uniqueness (encodes the candidates again)
    n = len(cands)
    if n <= 1:
        urate = 1.0
    else:
        e = encode(cands).astype(np.float64)
        s = e @ e.T
        red = set()
        for i in range(n):
            if i in red:
                continue
            for j in range(i + 1, n):
                if s[i, j] >= 0.78:
                    red.add(j)
        urate = (n - len(red)) / n
    cov, uniq, f = bucket(rate), uniq_bucket(urate), fmt_score(completion)
    total = max(0.0, 0.3 * cov + w_f * f + tag + w_u * uniq)
    return {"coverage": cov, "uniqueness": uniq, "format": f, "tag": tag, "total": total}
