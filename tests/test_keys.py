"""The provenance keys are honest: every setting changes exactly the keys the registry says, throughput settings and
comment/docstring edits change none, a real code change reruns its step and what is downstream."""

import ast
import dataclasses
import re
import shutil
import typing

import pytest

from opgrpo_lib import config as config_mod
from opgrpo_lib import keys
from opgrpo_lib.config import TRAINER_THROUGHPUT, ConfigError, load_profile
from opgrpo_lib.keys import code_closure, step_keys
from opgrpo_lib.registry import STEPS

PROFILES = ("tiny", "cpu", "paper")
EVAL_STACK = {"evaluate", "judge", "stats", "generate", "figures", "figures_gpu", "sweep"}


# ---------------------------------------------------------------- every leaf setting
def _leaves(obj, prefix=""):
    """(dotted key, value, field) for every leaf setting; train.sft / train.grpo keys and dict entries are leaves."""
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{key}.")
        elif isinstance(value, dict) and value:
            for k, v in value.items():
                yield f"{key}.{k}", v, None
        else:
            yield key, value, f


def _special_mutations(cfg, value) -> dict:
    """Hand-chosen valid changes for the keys a generic rule cannot mutate."""
    return {
        "reward.weights": "early" if value != "early" else "final",
        "train.init": "policy" if value != "policy" else "run:sft",
        "reward.estimator": "sentence-transformers/all-MiniLM-L6-v2" if value == "run:estimator" else "run:estimator",
        "eval.reference_system": next((s.name for s in cfg.generate.systems if s.name != value), value),
        "generate.systems": [dataclasses.asdict(s) for s in cfg.generate.systems if s.name != "base_explicit"]
        or [{"name": "op_grpo", "policy": "run:grpo"}],
        "generate.split_rows": {"5p": 3},
        "data.eval_split_rows": {"5p": 3} if value != {"5p": 3} else {},
        "generate.splits": ["5p"],
        "data.eval_keep_all": ["gt10p"] if value != ["gt10p"] else [],
        "eval.sbert_thresholds": [0.7, 0.75] if value != [0.7, 0.75] else [0.7],
        "estimator.thresholds": [0.6, 0.7] if value != [0.6, 0.7] else [0.6],
        "train.lora.target_modules": ["q_proj"],
        "generate.modplural.community": ["some/adapter"],
        "generate.modplural.community_system_prompts": ["You are one community."],
        "authors.rescore_encoders": [] if value else ["tiny:encoder"],
        "authors.rescore_systems": ["all"] if value != ["all"] else ["headline"],
        "styles.styles": ["control", "bare"] if value != ["control", "bare"] else ["control"],
        "styles.custom": {"terse": "Answer: {situation}"} if value != {"terse": "Answer: {situation}"} else {},
        "styles.system_modes": ["default"] if value != ["default"] else ["default", "empty"],
        "styles.systems": ["op_grpo", "sft"] if value != ["op_grpo", "sft"] else ["op_grpo", "sft", "base_implicit"],
        "styles.mode_systems": ["op_grpo"] if value != ["op_grpo"] else None,
        "styles.split_rows": {"5p": 1} if value != {"5p": 1} else {"5p": 2},
        "styles.languages": ["en", "zh"] if value == ["en"] else ["en"],
        "authors.rescore_splits": ["5p"] if value != ["5p"] else ["10p"],
        "reward.agree_with": [] if value else ["tiny:encoder"],
        "alignment.policy": "policy" if value != "policy" else "run:sft",
        "alignment.samples": 0 if value else 4,
        "alignment.variants": ["authors"] if value != ["authors"] else ["unmasked"],
        "translate.source": f"./{value}" if value != "eval" else "opgrpo_lib/resources/zh_parallel.jsonl",
        "translate.model": f"fixture:./{str(value)[8:]}" if str(value).startswith("fixture:") else f"{value}-other",
        "translate.zh_evaluator": "tiny:encoder" if value != "tiny:encoder" else "intfloat/multilingual-e5-small",
        "translate.zh_nli": "tiny:nli" if value != "tiny:nli" else "joeddav/xlm-roberta-large-xnli",
        "translate.splits": ["5p"] if value != ["5p"] else ["10p"],
    }


def _mutate(cfg, key, value, f):
    """A different value for ``key`` that passes validation."""
    special = _special_mutations(cfg, value)
    # TRL's rule (checked at load): the generation batch holds whole groups of num_generations completions
    if key in ("train.grpo.per_device_train_batch_size", "train.grpo.gradient_accumulation_steps"):
        return value * 2
    if key == "train.grpo.num_generations":
        return value // 2 if value % 4 == 0 else value * 2
    if key in special:
        return special[key]
    tp = typing.get_type_hints(type(_owner(cfg, key)))[key.rsplit(".", 1)[-1]] if f else None
    lo, hi = f.metadata.get("range", (None, None)) if f else (None, None)
    if f is not None and typing.get_origin(tp) is typing.Literal:
        return next(a for a in typing.get_args(tp) if a != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if hi is None or value + 1 <= hi else value - 1
    if isinstance(value, float):
        new = value * 0.9 if value else 0.05
        return new if lo is None or new >= lo else value + 0.05
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        args = set(typing.get_args(tp)) - {type(None)}
        return 3 if int in args else 0.5 if float in args else "other" if str in args else pytest.fail(key)
    pytest.fail(f"no mutation for {key}={value!r}")


def _owner(cfg, dotted):
    node = cfg
    for part in dotted.split(".")[:-1]:
        node = getattr(node, part)
    return node


def _is_throughput(key, f) -> bool:
    return bool(f and f.metadata.get("throughput")) or (
        key.startswith(("train.sft.", "train.grpo.")) and key.rsplit(".", 1)[-1] in TRAINER_THROUGHPUT
    )


def _declared(cfg, step) -> set[str]:
    return set(STEPS[step].config(cfg))


def _expected(old, new, key, f) -> set[str]:
    """What the registry declares: the steps reading ``key`` (or a section containing it), the steps whose upstream
    set changed, and everything downstream of those."""
    direct = set()
    if not _is_throughput(key, f):
        for s in STEPS:
            for d in _declared(old, s) | _declared(new, s):
                if key == d or key.startswith(d + ".") or d.startswith(key + "."):
                    direct.add(s)
    direct |= {s for s, spec in STEPS.items() if spec.upstream(old) != spec.upstream(new)}
    changed = set(direct)
    for s, spec in STEPS.items():  # registry order is topological
        if set(spec.upstream(new)) & changed:
            changed.add(s)
    return {s for s in changed if STEPS[s].enabled(new)}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_setting_changes_exactly_the_declared_keys(profile):
    base = load_profile(profile)
    before = step_keys(base)
    checked = 0
    for key, value, f in _leaves(base):
        if key == "profile":
            continue
        new_value = _mutate(base, key, value, f)
        assert new_value != value, key
        try:
            new = load_profile(profile, {key: new_value})
        except ConfigError as exc:
            pytest.fail(f"{profile}: the test's change of {key} to {new_value!r} does not load: {exc}")
        after = step_keys(new)
        got = {s for s in STEPS if STEPS[s].enabled(new) and before[s] != after[s]}
        assert got == _expected(base, new, key, f), f"{profile}: {key}: {value!r} -> {new_value!r}"
        checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "override, unchanged, changed",
    [  # the measured cases on the cpu profile
        ({"reward.batch_size": 8}, set(STEPS), set()),
        ({"eval.nli_batch_size": 8, "generate.batch_size": 3}, set(STEPS), set()),
        ({"train.grpo.dataloader_num_workers": 2}, set(STEPS), set()),
        ({"reward.weights": "early"}, {"data", "estimator", "sft"}, {"sft_validation", "grpo", "evaluate"}),
        (
            {"eval.sbert_thresholds": [0.75]},
            {"data", "estimator", "sft", "grpo", "generate"},
            {"sft_validation", "grpo_validation", "evaluate"},
        ),  # an evaluation setting never retrains
        ({"eval.bootstrap_reps": 500}, {"data", "estimator", "sft", "sft_validation", "grpo", "generate"}, set()),
        ({"eval.checkpoint_rows_per_split": 2}, {"data", "estimator", "sft"}, {"grpo", "evaluate"}),
        ({"train.sft.learning_rate": 2e-4}, {"data", "estimator"}, {"sft", "sft_validation", "grpo"}),
    ],
)
def test_measured_cases(override, unchanged, changed):
    a, b = step_keys(load_profile("cpu")), step_keys(load_profile("cpu", override))
    assert {s for s in unchanged if a[s] == b[s]} == unchanged
    assert {s for s in changed if a[s] != b[s]} == changed


# ---------------------------------------------------------------- code
def test_training_does_not_import_the_evaluation_stack():
    # the validation points are scoring steps of their own (they use stats for the curve's paired CIs); an edit
    # there re-scores them and retrains nothing (test_provenance)
    for step in ("sft", "grpo"):
        assert not EVAL_STACK & set(code_closure(STEPS[step].module)), step


def _noise(source: str) -> str:
    """The same module with comments, docstrings and formatting changed (behaviour untouched): every docstring
    edited, each one-line ``def`` without one given a docstring and a comment, comments at the top and the end."""
    docstring_lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(
            node, clean=False
        ):
            docstring_lines.add(node.body[0].lineno - 1)
    src = source.splitlines()
    lines = []
    for i, line in enumerate(src):
        if i in docstring_lines:
            line = re.sub(r'^(\s*r?(?:"""|\'\'\'|"|\'))', r"\1Edited by the test. ", line, count=1)
        lines.append(line)
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())] + "    "
        if stripped.startswith("def ") and stripped.endswith(":") and i + 1 not in docstring_lines:
            lines.append(f"{indent}# a comment added by the test")
            lines.append(f'{indent}"""A docstring added by the test."""')
    return "# a comment at the top\n\n" + "\n".join(lines) + "\n\n\n# a comment at the end\n"


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    copy = tmp_path / "opgrpo_lib"
    shutil.copytree(keys.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(keys, "PACKAGE_DIR", copy)
    return copy


def test_comment_and_docstring_edits_change_no_key(package_copy):
    cfgs = {p: load_profile(p) for p in PROFILES}
    before = {p: step_keys(c) for p, c in cfgs.items()}
    modules = sorted(package_copy.rglob("*.py"))
    for path in modules:
        path.write_text(_noise(path.read_text()))
    compile_all = [compile(p.read_text(), str(p), "exec") for p in modules]  # the edits keep valid Python
    assert len(compile_all) == len(modules) > 20
    assert all("Edited by the test" in p.read_text() for p in modules)
    assert {p: step_keys(c) for p, c in cfgs.items()} == before


@pytest.mark.parametrize("module", ["train", "reward", "evaluate", "nli", "figures", "data", "text"])
def test_a_code_change_reruns_its_steps_and_downstream(package_copy, module):
    cfg = load_profile("cpu")
    before = step_keys(cfg)
    path = keys.module_path(module, package_copy)
    path.write_text(path.read_text() + "\n\nBEHAVIOUR_CHANGED_BY_THE_TEST = 1\n")
    after = step_keys(cfg)
    direct = {s for s in STEPS if module in code_closure(STEPS[s].module, package_copy)}
    expected = set(direct)
    for s, spec in STEPS.items():
        if set(spec.upstream(cfg)) & expected:
            expected.add(s)
    assert direct and {s for s in STEPS if before[s] != after[s]} == expected
    if module == "evaluate":  # step 08 re-scores the authors' logs through nli / reward, not evaluate; the styles
        assert expected == {"evaluate", "figures", "styles"}  # step splits English outputs with step 06's splitter
    if module == "nli":  # the NLI protocol shared by steps 06 and 08, the style test and the Chinese arm's check
        assert expected == {"evaluate", "figures", "authors", "styles", "translate"}


def test_the_gpu_model_reruns_nothing_and_the_figures_code_step_07_only(package_copy):
    """The memory/disk model decides whether a step starts (disk check) or which profile ``auto`` picks, never what
    a step computes; the figures code is step 07's alone."""
    cfg = load_profile("cpu")
    before = step_keys(cfg)
    for module, expected in (("gpu", set()), ("figures", {"figures"})):
        path = keys.module_path(module, package_copy)
        path.write_text(path.read_text() + f"\n\nBEHAVIOUR_CHANGED_BY_THE_TEST_{module.upper()} = 1\n")
        after = step_keys(cfg)
        assert {s for s in STEPS if before[s] != after[s]} == expected, module
        before = after


def test_a_new_setting_reruns_nothing_and_a_settings_helper_reruns_its_users(package_copy):
    """The settings module is keyed through the values a step reads: a new setting, its default and its load-time
    check change no key; an edit of a helper that step code imports from it (``trl_value``) reruns the steps whose
    code imports it and what is downstream of them."""
    cfg = load_profile("cpu")
    before = step_keys(cfg)
    path = keys.module_path("config", package_copy)
    src = path.read_text()
    field = "    min_kappa: float = bounded(0.6, -1.0, 1.0)"
    call = "    _check_translate(cfg)\n"
    assert field in src and call in src
    src = src.replace(field, field + "\n    added_by_the_test: int = bounded(3, 0)")
    src = src.replace(call, call + "    _check_added(cfg)\n")
    src += "\n\ndef _check_added(cfg):\n    if cfg.translate.added_by_the_test > 9:\n        raise ConfigError('x')\n"
    path.write_text(src)
    assert step_keys(cfg) == before
    head = "def trl_value(section: dict[str, Any], section_name: str, key: str) -> Any:\n"
    path.write_text(src.replace(head, head + "    assert section_name, 'changed by the test'\n"))
    expected = {"sft_validation", "alignment", "grpo_validation"}
    for s, spec in STEPS.items():
        if set(spec.upstream(cfg)) & expected:
            expected.add(s)
    after = step_keys(cfg)
    assert {s for s in STEPS if before[s] != after[s]} == expected


def test_the_scoring_code_of_the_validation_points_retrains_nothing(package_copy):
    """An edit of the validation scoring re-scores the saved policies (and what is downstream of the curve steps:
    nothing) and never retrains SFT or GRPO."""
    cfg = load_profile("cpu")
    before = step_keys(cfg)
    path = keys.module_path("validation", package_copy)
    path.write_text(path.read_text() + "\n\nBEHAVIOUR_CHANGED_BY_THE_TEST = 1\n")
    after = step_keys(cfg)
    assert {s for s in STEPS if before[s] != after[s]} == {"sft_validation", "grpo_validation"}


def test_the_data_step_is_keyed_over_data_code_only():
    assert set(code_closure(STEPS["data"].module)) - keys.NEUTRAL_MODULES == {
        "checkpoints", "config", "data", "prompts", "runs", "steps.data", "text"
    }  # fmt: skip


def test_a_docstring_is_not_a_string_statement():
    """Only the leading string of a module/class/function is a docstring; a string elsewhere is code."""
    tree = keys._strip_docstrings(
        ast.parse('"""doc"""\nx = 1\n"not a docstring"\ndef f():\n    """d"""\n    return 1\n')
    )
    dumped = ast.dump(tree)
    assert "'doc'" not in dumped and "'d'" not in dumped and "not a docstring" in dumped


def test_trainer_keys_checked_at_load():
    for bad, message in [
        ({"train.grpo.learnin_rate": 1e-3}, "did you mean 'learning_rate'"),
        ({"train.grpo.max_step": 10}, "did you mean 'max_steps'"),
        ({"train.grpo.max_steps": -5}, r"train.grpo.max_steps: -5 is outside"),
        ({"train.grpo.learning_rate": 0}, r"train.grpo.learning_rate: 0 is outside"),
        ({"train.grpo.beta": float("nan")}, r"train.grpo.beta: nan is not a finite number"),
        ({"train.sft.num_train_epochs": "two"}, r"train.sft.num_train_epochs: expected float"),
        ({"train.sft.learning_rate": "1e-4"}, "is a string in YAML"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_profile("cpu", bad)
    assert load_profile("cpu", {"train.grpo.max_steps": -1, "train.sft.report_to": "none"})


def test_trainer_fields_are_the_installed_trl_fields():
    trl = pytest.importorskip("trl")
    for section, cls in (("sft", trl.SFTConfig), ("grpo", trl.GRPOConfig)):
        assert set(config_mod.trainer_fields(section)) == {f.name for f in dataclasses.fields(cls)}


def test_the_reproduce_cli_fails_before_any_step(tmp_path, capsys):
    from opgrpo_lib.cli import main

    rc = main(["reproduce", "--profile", "cpu", "--run-dir", str(tmp_path), "--set", "train.grpo.learnin_rate=1e-3"])
    assert rc != 0 and re.search(r"did you mean 'learning_rate'", capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


def test_the_library_has_no_import_cycles():
    """Function-local imports count too: a cycle hidden inside a function is still a cycle."""
    pkg = keys.PACKAGE_DIR
    names = [".".join(p.relative_to(pkg).with_suffix("").parts).removesuffix(".__init__") for p in pkg.rglob("*.py")]
    graph = {m: set(code_closure(m)) - {m} for m in names if m != "__init__"}
    cycles = sorted(a for a, reach in graph.items() if any(a in graph[b] for b in reach))
    assert not cycles, f"modules on an import cycle: {cycles}"


# ---------------------------------------------------------------- what the code reads vs what the registry declares
# Reads that are not part of a key on purpose (each with its reason).
NOT_KEYED = {
    "train.grpo@steps.alignment": "read through trl_value for max_completion_length, temperature, top_p (declared)",
    "profile": "the profile's name (folders, messages)",
    "translate.zh_share_min@styles": "read for Chinese conditions only, and then keyed (registry._styles_keys)",
    "translate.zh_evaluator@steps.styles": "read for Chinese conditions only, and then keyed (registry._styles_keys)",
    "translate.zh_nli@steps.styles": "read for Chinese conditions only, and then keyed (registry._styles_keys)",
    "train.validation_every": "switches the curve / the sft_validation step on (StepSpec.enabled, the curve keys)",
}


def _config_reads(module: str) -> set[str]:
    """Dotted config keys a module reads as ``cfg.a.b`` (also through ``x = cfg.a`` aliases), maximal chains only."""
    tree = ast.parse(keys.module_path(module, keys.PACKAGE_DIR).read_text())

    def chain(node, aliases):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and (node.id == "cfg" or node.id in aliases):
            base = [] if node.id == "cfg" else aliases[node.id].split(".")
            parts = [p for p in parts[::-1] if p not in ("get", "items", "keys", "values")]
            return ".".join(base + parts) or None
        return None

    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if c := chain(node.value, {}):
                aliases[node.targets[0].id] = c
    reads = {c for node in ast.walk(tree) if isinstance(node, ast.Attribute) and (c := chain(node, aliases))}
    for node in ast.walk(tree):  # cfg.train.grpo.get("max_completion_length", ...) reads that key
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if node.args and isinstance(node.args[0], ast.Constant) and (c := chain(node.func.value, aliases)):
                reads.add(f"{c}.{node.args[0].value}")
    return {c for c in reads if not any(o.startswith(c + ".") for o in reads)}


@pytest.mark.parametrize("profile", PROFILES)
def test_every_setting_a_step_module_reads_is_in_its_key(profile):
    """Each ``cfg.…`` read in a step's entry module or the library code it imports is declared by a step of that module or one upstream of it
    (an upstream key covers it), or is throughput-only, or is listed in NOT_KEYED with its reason."""
    cfg = load_profile(profile)

    def upstream_closure(step):
        seen, todo = set(), [step]
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo += list(STEPS[s].upstream(cfg))
        return seen

    # each step module and each library module a step module imports itself, with the steps that use it (config
    # checks every key and the neutral modules compute nothing: left out)
    users: dict[str, set[str]] = {}
    for step, spec in STEPS.items():
        for used in {spec.module, *keys._module(spec.module, keys.PACKAGE_DIR)[1]}:
            users.setdefault(used, set()).add(step)
    top = {f.name for f in dataclasses.fields(cfg)}  # a ``cfg`` of a section type (RewardCfg...) is not this one
    for used in sorted(set(users) - keys.NEUTRAL_MODULES - {"config"}):
        covering = set().union(*(upstream_closure(s) for s in users[used]))
        declared = set().union(*(set(STEPS[s].config(cfg)) for s in covering))
        for read in (r for r in _config_reads(used) if r.split(".")[0] in top):
            field = _field_of(cfg, read)
            if read in NOT_KEYED or f"{read}@{used}" in NOT_KEYED or _is_throughput(read, field):
                continue
            assert any(read == d or read.startswith(d + ".") for d in declared), f"{used} reads {read}: undeclared"


def _field_of(cfg, dotted):
    node, f = cfg, None
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node):
            return f
        f = next((x for x in dataclasses.fields(node) if x.name == part), None)
        node = getattr(node, part, None)
    return f
