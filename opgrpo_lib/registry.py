"""The step registry: the one place where a pipeline step's identity is written.

A step's name is its run-folder name, its CLI verb (``opgrpo <name>``), the tail of its notebook
(``NN_<name>.ipynb``) and of its manifest (``results/manifests/NN_<name>.json``); its code is
``opgrpo_lib/steps/<module>.py``. Everything else (the pipeline, the CLI, publish, the keys, the run-folder
lifecycle, the notebook generator and the README updater) derives from :data:`STEPS`, so adding a step is one
:class:`StepSpec` here plus its module under ``steps/`` and its notebook in ``scripts/make_notebooks.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RunConfig

Keys = Callable[["RunConfig"], tuple[str, ...]]


@dataclass(frozen=True)
class StepSpec:
    """One pipeline step. ``function`` is ``module:function`` below ``opgrpo_lib.steps``, called as
    ``function(cfg, paths, **kw)``. A ``long`` step resumes an interrupted run, is a no-op once finished with the
    same key, moves an older run aside to ``<name>.previous`` (with its ``results`` files and manifest) and brings
    it back when its settings do; the others rewrite their outputs in place."""

    number: str  # the notebook's number: the notebook is ``<number>_<notebook name>``
    name: str
    function: str
    config: Keys  # dotted config keys the step reads (may depend on switches)
    upstream: Keys
    outputs: tuple[str, ...] = ()  # what it writes under the run's results/ (files or folders)
    help: str = ""
    enabled: Callable[[RunConfig], bool] = lambda cfg: True  # a step that is off has no output to reuse or check
    cli: bool = True  # ``opgrpo <name>`` runs it (False: run by its notebook's first step)
    long: bool = False
    noop_when_current: bool = False  # a rerun with the same key does nothing (always so for a long step)
    part_of: str | None = None  # run inside this step's notebook (``03_sft`` runs sft, then sft_validation)

    @property
    def notebook(self) -> str:
        return f"{self.number}_{self.part_of or self.name}"

    @property
    def manifest(self) -> str:
        """Name of its manifest under ``results/manifests`` (without ``.json``)."""
        return f"{self.number}_{self.name}"

    @property
    def module(self) -> str:
        """Entry module below the package (its import closure is the code part of the key)."""
        return "steps." + self.function.split(":")[0]

    @property
    def entry(self) -> tuple[str, str]:
        """(importable module, function) of the entry point."""
        module, fn = self.function.split(":")
        return f"opgrpo_lib.steps.{module}", fn

    @property
    def moves(self) -> tuple[str, ...]:
        """Files under ``results/`` that belong to one run of a long step (its own and those of the steps run by it,
        e.g. GRPO's validation curve): they move aside (and come back) with its folder, so a new run never inherits
        the old run's curve, log or metrics."""
        if not self.long:
            return ()
        mine = [s for s in STEPS.values() if s.name == self.name or s.part_of == self.name]
        return tuple(f for s in mine for f in (*s.outputs, f"manifests/{s.manifest}.json"))


def _grpo_upstream(cfg: RunConfig) -> tuple[str, ...]:
    ups = ["data"]
    if cfg.reward.estimator == "run:estimator":
        ups.append("estimator")
    if cfg.train.init.startswith("run:"):
        ups.append(cfg.train.init[4:])
    return tuple(ups)


def policy_steps(cfg: RunConfig) -> tuple[str, ...]:
    """Training steps whose saved policies step 05 generates from (``run:sft`` / ``run:grpo`` systems)."""
    return tuple(dict.fromkeys(s.policy[4:] for s in cfg.generate.systems if s.policy.startswith("run:")))


def _evaluate_upstream(cfg: RunConfig) -> tuple[str, ...]:
    ups = ["data", "generate"]
    if cfg.eval.checkpoint_rows_per_split:
        ups.append("grpo")
    if cfg.eval.estimator_coverage and cfg.reward.estimator == "run:estimator":
        ups.append("estimator")
    return tuple(ups)


def _figures_upstream(cfg: RunConfig) -> tuple[str, ...]:
    """Every step whose results a figure draws."""
    extra = [s for s in ("alignment", "styles") if STEPS[s].enabled(cfg)]
    return ("data", "estimator", *policy_steps(cfg), *extra, "evaluate")


def _keys(*keys: str) -> Keys:
    return lambda cfg: keys


_TRAIN = ("seed", "device", "models.policy", "train.backend", "train.lora", "train.load_in_4bit",
          "train.max_seq_length", "train.merge_adapter", "train.precision")  # fmt: skip
# What a validation point reads: the situations, the budget, the reward and the independent evaluator.
_VALIDATION = ("seed", "device", "train.validation_rows", "models.eval_encoder", "models.encoder",
               "eval.sbert_thresholds", "train.grpo.max_completion_length", "reward")  # fmt: skip
_GRPO = (*_TRAIN, "train.init", "train.use_vllm", "train.max_prompt_length", "train.grpo", "train.generation_chunk",
         "train.validation_every", "reward", "data.grpo_rows", "data.train_source", "eval.checkpoint_rows_per_split")  # fmt: skip
_SFT = (*_TRAIN, "train.summaries", "train.targets", "train.compact_words", "train.sft",
        "train.grpo.max_completion_length")  # fmt: skip


# What the alignment check reads: its settings, the reward, the encoders, GRPO's sampling and the evaluator.
_ALIGNMENT = ("seed", "device", "alignment", "reward", "models.encoder", "models.eval_encoder", "models.policy",
              "eval.sbert_thresholds", "train.grpo.max_completion_length", "train.grpo.temperature",
              "train.grpo.top_p")  # fmt: skip


# What the prompt-style check reads: the sampling, the systems and their policies, its settings, the evaluators.
_STYLES = ("seed", "device", "models.policy", "models.eval_encoder", "generate", "styles", "eval.sbert_thresholds",
           "models.nli", "eval.nli_text")  # fmt: skip


def _styles_keys(cfg: RunConfig) -> tuple[str, ...]:
    return _STYLES + (("translate",) if _chinese(cfg) else ())


def _styles_upstream(cfg: RunConfig) -> tuple[str, ...]:
    return ("data", *policy_steps(cfg)) + (("translate",) if _chinese(cfg) else ())


def _alignment_upstream(cfg: RunConfig) -> tuple[str, ...]:
    ups = ["data"]
    if cfg.alignment.policy.startswith("run:"):
        ups.append(cfg.alignment.policy[4:])
    if cfg.reward.estimator == "run:estimator":
        ups.append("estimator")
    return tuple(dict.fromkeys(ups))


# What the Chinese arm's translations read: its settings, the English evaluator (back-translation check) and its
# threshold (the calibration target), the English NLI model (the NLI check's target).
_TRANSLATE = ("seed", "device", "translate", "models.eval_encoder", "eval.sbert_thresholds", "models.nli")


def _translate_upstream(cfg: RunConfig) -> tuple[str, ...]:
    return ("data",) if cfg.translate.source == "eval" else ()


def _chinese(cfg: RunConfig) -> bool:
    from .config import chinese_arm

    return chinese_arm(cfg)


def _validating(cfg: RunConfig) -> bool:
    return cfg.train.validation_every > 0


STEPS: dict[str, StepSpec] = {
    s.name: s
    for s in (
        StepSpec("01", "data", "data:run", _keys("seed", "data"), lambda c: (), ("data_card.json",),
                 "step 01: fetch (hash-checked), parse and split OP-V2"),
        StepSpec("02", "estimator", "estimator:run",
                 _keys("seed", "device", "models.encoder", "estimator", "reward.mask", "reward.coverage_threshold"),
                 lambda c: ("data",), ("estimator",),
                 "step 02: mine triplets, fine-tune and evaluate the similarity estimator", long=True),
        StepSpec("03", "sft", "sft:run", _keys(*_SFT), lambda c: ("data",), ("sft_train_log.csv",),
                 "step 03: SFT warm start (core perspectives + summary)", long=True),
        StepSpec("03", "sft_validation", "validation:sft", _keys(*_VALIDATION), lambda c: ("data", "sft"),
                 ("sft_validation.json",), "end-of-SFT validation point (run by `opgrpo sft`)", _validating,
                 cli=False, noop_when_current=True, part_of="sft"),
        StepSpec("03", "alignment", "alignment:run", _keys(*_ALIGNMENT), _alignment_upstream, ("alignment",),
                 "reward-evaluator alignment check: best-of-n picks of each reward variant on validation samples",
                 lambda c: c.alignment.samples > 0, noop_when_current=True, part_of="sft"),
        StepSpec("04", "grpo", "grpo:run", _keys(*_GRPO), _grpo_upstream, ("train_log.csv",),
                 "step 04: OP-GRPO (resumes from the last checkpoint)", long=True),
        StepSpec("04", "grpo_validation", "validation:grpo", _keys(*_VALIDATION, "train.validation_every"),
                 lambda c: ("data", "grpo"), ("validation_curve.csv",),
                 "GRPO's validation curve, scored from its checkpoints (run by `opgrpo grpo`)", _validating,
                 cli=False, noop_when_current=True, part_of="grpo"),
        StepSpec("05", "generate", "generate:run", _keys("seed", "device", "models.policy", "generate"),
                 lambda c: ("data", *policy_steps(c)), ("generations",),
                 "step 05: outputs of every configured system for the eval splits"),
        StepSpec("05", "translate", "translate:run", _keys(*_TRANSLATE), _translate_upstream, ("translate",),
                 "Chinese arm: evaluation situations translated field by field, checked, evaluator calibrated",
                 _chinese, noop_when_current=True, part_of="generate"),
        StepSpec("05", "styles", "styles:run", _styles_keys, _styles_upstream, ("styles",),
                 "prompt-style generalisation: every style and system-message mode, scored (run by `opgrpo generate`)",
                 lambda c: bool(c.styles.styles), noop_when_current=True, part_of="generate"),
        StepSpec("06", "evaluate", "evaluate:run", _keys("seed", "device", "models", "reward", "eval", "train.init"),
                 _evaluate_upstream, ("eval",), "step 06: SBERT / NLI coverage, tokens, judge, paired tests"),
        StepSpec("07", "figures", "figures:run", _keys("eval.reference_system"), _figures_upstream, (),
                 "step 07: every figure and table from results/"),
        StepSpec("08", "authors", "authors:run", _keys("seed", "device", "data", "authors"), lambda c: (),
                 ("authors",), "step 08: the authors' own evaluation logs, verified, regenerated and re-scored"),
    )
}  # fmt: skip


def steps_of(notebook: str) -> list[StepSpec]:
    """The steps a notebook runs, in registry order."""
    return [s for s in STEPS.values() if s.notebook == notebook]


def notebooks() -> list[str]:
    """The pipeline notebooks in order (stems)."""
    return list(dict.fromkeys(s.notebook for s in STEPS.values()))


def manifests() -> dict[str, StepSpec]:
    """Manifest name -> step."""
    return {s.manifest: s for s in STEPS.values()}


def upstream_hint(name: str) -> str:
    """How a user makes step ``name``'s output: its notebook, or the CLI verb of the step that runs it."""
    spec = STEPS[name]
    return f"notebook {spec.notebook} (or `opgrpo {spec.part_of or spec.name}`)"
