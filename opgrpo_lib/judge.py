"""LLM-as-judge (paper: GPT-4.1): five aspects scored 1–5 with a reason each, strict JSON, via the official
``openai`` client against any OpenAI-compatible endpoint. Responses are cached on disk (reruns cost nothing),
requests retry with backoff, a row cap and a cost cap bound the spend, malformed JSON is counted, not fatal.
The API key is read from the environment only and never logged."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import JudgeCfg
from .runs import atomic_write_text

ASPECTS = ("helpfulness", "clarity", "factuality", "depth", "engagement")
SYSTEM = "You are a strict JSON grader. Only return valid JSON per the provided schema."
# Multi-aspect rubric in the Just-Eval/URIAL style the authors used (their exact string is not public in full).
TEMPLATE = """Please act as an impartial judge and evaluate the quality of the responses provided. You will rate the quality of the output on multiple aspects such as Helpfulness, Clarity, Factuality, Depth, and Engagement.

## Query:
{query}

## Output:
{output}

## Evaluate

### Aspects

- Helpfulness: Rate the response based on how well it addresses the user's query and provides a relevant solution. A score of 5 indicates the answer fully aids the user, while a 1 suggests it offers little to no help.
- Clarity: Rate the response based on how well-structured it is, with ideas presented in a clear and coherent manner. A high score of 5 means the answer is clear and logically structured, while a 1 suggests a disjointed or confusing reply.
- Factuality: Evaluate the factual accuracy and truthfulness of the information provided. A perfect 5 indicates the information is entirely correct and accurate, while a 1 suggests it has significant factual errors.
- Depth: Determine the level of detail and thoroughness in the response. A score of 5 means the answer delves deeply into the topic, while a 1 indicates it barely scratches the surface.
- Engagement: Assess how engaging and natural the response sounds in a conversational context. A high score of 5 reflects a response that feels engaging and human-like in its tone, while a 1 indicates a robotic or boring reply.

### Format

Given the query, please rate the quality of the output by scoring it from 1 to 5 individually on **each aspect**.

- 1: strongly disagree
- 2: disagree
- 3: neutral
- 4: agree
- 5: strongly agree

Now, please output your scores and a short rationale below in a json format by filling in the placeholders in []:
```
{{"helpfulness": {{"reason": "[your rationale]", "score": "[score from 1 to 5]"}}, "clarity": {{"reason": "[your rationale]", "score": "[score from 1 to 5]"}}, "factuality": {{"reason": "[your rationale]", "score": "[score from 1 to 5]"}}, "depth": {{"reason": "[your rationale]", "score": "[score from 1 to 5]"}}, "engagement": {{"reason": "[your rationale]", "score": "[score from 1 to 5]"}}}}
```"""


@dataclass
class JudgeResult:
    scores: list[dict[str, Any]] = field(default_factory=list)  # one per row judged (None scores if malformed)
    malformed: int = 0
    failed: int = 0
    cached: int = 0
    requested: int = 0
    cost_usd: float = 0.0
    stopped_by_cost_cap: bool = False

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.scores if s.get("valid")]
        means = {a: (sum(s[a] for s in ok) / len(ok) if ok else None) for a in ASPECTS}
        vals = [v for v in means.values() if v is not None]
        return {
            "rows": len(self.scores),
            "parsed": len(ok),
            "malformed": self.malformed,
            "failed": self.failed,
            "cached": self.cached,
            "requested": self.requested,
            "cost_usd": round(self.cost_usd, 4),
            "stopped_by_cost_cap": self.stopped_by_cost_cap,
            **means,
            "overall": sum(vals) / len(vals) if vals else None,
        }


def parse_judgement(text: str) -> dict[str, Any] | None:
    """Scores (int 1–5) and reasons from the judge's JSON; None when it is not valid."""
    m = re.search(r"\{.*\}", text or "", re.S)
    if not m:
        return None
    try:
        obj = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    out: dict[str, Any] = {}
    for a in ASPECTS:
        item = obj.get(a) if isinstance(obj, dict) else None
        if not isinstance(item, dict):
            return None
        try:
            score = int(str(item.get("score", "")).strip().strip("[]"))
        except ValueError:
            return None
        if not 1 <= score <= 5:
            return None
        out[a] = score
        out[f"{a}_reason"] = str(item.get("reason", ""))
    return out


class Judge:
    def __init__(self, settings: JudgeCfg, cache_dir: Path, client: Any = None):
        self.s = settings
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get(self.s.api_key_env)
            if not key:
                raise RuntimeError(f"LLM judge: set the API key in the environment variable {self.s.api_key_env}")
            self._client = OpenAI(
                api_key=key, base_url=self.s.base_url, timeout=self.s.timeout_s, max_retries=self.s.max_retries
            )
        return self._client

    def _key(self, query: str, output: str) -> str:
        blob = json.dumps([self.s.model, self.s.base_url, SYSTEM, TEMPLATE, query, output], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _request(self, prompt: str) -> tuple[str, dict[str, int]]:
        """One chat completion; transport and 429/5xx errors are retried by the client itself (``max_retries``,
        exponential backoff); what still fails is one failed row."""
        import openai

        kwargs: dict[str, Any] = {"response_format": {"type": "json_object"}} if self.s.json_mode else {}
        try:
            resp = self.client.chat.completions.create(
                model=self.s.model,
                max_tokens=self.s.max_output_tokens,
                temperature=0,
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                **kwargs,
            )
        except openai.OpenAIError as exc:
            raise RuntimeError(
                f"judge request failed after {self.s.max_retries + 1} attempts: {type(exc).__name__}"
            ) from None
        usage = getattr(resp, "usage", None)
        tokens = {
            "input": getattr(usage, "prompt_tokens", 0) or 0,
            "output": getattr(usage, "completion_tokens", 0) or 0,
        }
        return resp.choices[0].message.content or "", tokens

    def judge(self, queries: list[str], outputs: list[str | None]) -> JudgeResult:
        from tqdm.auto import tqdm

        res = JudgeResult()
        for query, output in tqdm(list(zip(queries, outputs))[: self.s.max_rows], desc="judge"):
            output = output or ""
            q, o = query[: self.s.query_chars], output[: self.s.output_chars]
            path = self.cache_dir / f"{self._key(q, o)}.json"
            if path.exists():
                raw = json.loads(path.read_text())["content"]
                res.cached += 1
            else:
                if res.cost_usd >= self.s.max_cost_usd:
                    res.stopped_by_cost_cap = True
                    break
                _ = self.client  # a missing key is a configuration error, not a retried request failure
                try:
                    raw, tokens = self._request(TEMPLATE.format(query=q, output=o))
                except RuntimeError:
                    res.failed += 1
                    res.scores.append({"prompt": query, "valid": False})
                    continue
                res.requested += 1
                res.cost_usd += tokens["input"] / 1000 * self.s.usd_per_1k_input
                res.cost_usd += tokens["output"] / 1000 * self.s.usd_per_1k_output
                atomic_write_text(path, json.dumps({"content": raw, "tokens": tokens}))
            parsed = parse_judgement(raw)
            if parsed is None:
                res.malformed += 1
                res.scores.append({"prompt": query, "valid": False})
            else:
                res.scores.append({"prompt": query, "valid": True, **parsed})
        return res
