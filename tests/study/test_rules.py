"""Rule helpers (registration_core.study.rules): the inputs, arguments and variants the Snakemake
rules get, checked on planned studies without running Snakemake."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

import pytest

from registration_core.cli import FILE_OPTIONS, build_parser
from registration_core.layout import REG_FILES
from registration_core.study.config import load_config
from registration_core.study.plan import Study
from registration_core.study.rules import PairRules, SubjectRules, file_args, variant_name

DEMO = "config/config.yaml"


@pytest.fixture(scope="module")
def demo() -> Study:
    return Study(load_config(DEMO))


def test_variant_names_follow_the_optional_files() -> None:
    assert variant_name("register", ("labels",), [("labels",)]) == "register"
    assert variant_name("register", ("labels",), [("labels",), ()]) == "register_with_labels"
    assert variant_name("register", (), [("labels",), ()]) == "register_plain"


def test_register_args_name_every_pair_file_and_the_grid_point(demo: Study) -> None:
    rules = PairRules(demo)
    job = demo.jobs[0]
    wildcards = SimpleNamespace(method=job.method, grid_id=job.grid_id, atlas=job.atlas, moving=job.moving)
    inputs = rules.register_inputs(wildcards)
    args = shlex.split(rules.register_args(wildcards, inputs))
    assert args[args.index("--fixed") + 1] == demo.prepared_files(job.atlas)["image"]
    assert args[args.index("--moving-labels") + 1] == demo.prepared_files(job.moving)["labels"]
    params = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--param")
    assert params == {key: str(value) for key, value in demo.register_params(job.method, job.grid_id).items()}


def test_evaluate_reads_the_registration_outputs_named_by_the_layout(demo: Study) -> None:
    rules = PairRules(demo)
    job = demo.jobs[-1]
    wildcards = SimpleNamespace(method=job.method, grid_id=job.grid_id, atlas=job.atlas, moving=job.moving)
    inputs = rules.evaluate_inputs(wildcards)
    assert inputs["registration"] == job.path("reg_dir")  # the folder: its files, or its failure record
    args = shlex.split(rules.evaluate_args(wildcards, inputs))
    for flag, key in (("--warped-image", "warped"), ("--warped-labels", "warped_labels"), ("--displacement", "displacement")):
        assert args[args.index(flag) + 1] == f"{job.path('reg_dir')}/{REG_FILES[key]}"
    assert "--truth-displacement" not in args and "--mask" not in args
    job_id = f"{job.method}/{job.grid_id}/{job.atlas}__{job.moving}"
    assert args[args.index("--job-id") + 1] == job_id and "--record-failures" in args
    assert args[args.index("--job-log") + 1] == f"{demo.path('logs')}/evaluate/{job_id}.log"


def test_step_rules_cover_every_step_of_every_subject(demo: Study) -> None:
    rules = SubjectRules(demo)
    steps = rules.step_rules()
    assert set(steps) == {("slice", ("labels",), False), ("normalize", ("labels",), True)}
    assert rules.step_rule_name("normalize", ("labels",), True) == "normalize_final"
    last = rules.step_outputs("normalize", ("labels",), True)
    assert last == {"image": demo.path("prep_image"), "labels": demo.path("prep_labels")}
    stage = rules.step_outputs("slice", ("labels",), False)
    assert stage["image"].endswith("/stages/{position}-slice/image.nii.gz")
    wildcards = SimpleNamespace(subject="demo-01", position="1")
    assert rules.step_settings(wildcards) == {"axis": 2, "index": "middle"}
    final = SimpleNamespace(subject="demo-01")
    assert rules.step_settings(final) == {"mode": "minmax"}
    args = shlex.split(rules.step_args(wildcards, rules.step_inputs(wildcards), {"image": "o.nii.gz", "labels": "l.nii.gz"}))
    assert args[:2] == ["--image", demo.stage_files("demo-01", 0)["image"]]
    assert ["--out", "o.nii.gz", "--out-labels", "l.nii.gz"] == args[args.index("--out"):args.index("--out") + 4]
    assert args[-4:] == ["--set", "axis=2", "--set", 'index="middle"']


@pytest.mark.parametrize(
    ("command", "groups"),
    [
        ("register", ["register"]), ("train", ["train"]), ("evaluate", ["evaluate"]),
        ("preprocess", ["subject", "subject_outputs"]), ("prepare", ["subject", "subject_outputs"]), ("qc", ["qc"]),
    ],
)
def test_every_declared_file_option_is_an_option_of_its_command(command: str, groups: list[str]) -> None:
    """The rules build their arguments from FILE_OPTIONS; the parser must accept each of them."""
    parser = build_parser()
    required = {
        "register": ["--method", "m", "--out", "o"], "train": ["--method", "m", "--out", "o"],
        "evaluate": ["--out", "o"], "preprocess": ["clip", "--out", "o"], "prepare": ["--steps", "[]", "--out-image", "o"],
        "qc": ["--out", "o"],
    }[command]
    for group in groups:
        files = {key: "f.nii.gz" for key in FILE_OPTIONS[group]}
        args = parser.parse_args([command, *required, *file_args(group, files), *_missing_required(command, group)])
        for key, option in FILE_OPTIONS[group].items():
            value = getattr(args, option.flag.removeprefix("--").replace("-", "_"))
            assert value is not None, f"{command} {option.flag}"


def _missing_required(command: str, group: str) -> list[str]:
    """Required options of ``command`` that ``group`` does not hold (the image of a subject)."""
    return ["--image", "i.nii.gz"] if group == "subject_outputs" else []


@pytest.mark.parametrize(("labels", "args"), [("all", []), ("oasis-28", ["--labels", "oasis-28"]), ([2, 3], ["--labels", "2,3"])])
def test_label_selection_reaches_evaluate(labels, args) -> None:
    config = load_config(DEMO)
    config["metrics"]["labels"] = labels
    assert Study(config).evaluate_label_args() == args


def test_a_preset_edited_in_the_library_changes_the_tracked_label_settings() -> None:
    config = load_config(DEMO)
    config["metrics"]["labels"] = "mindboggle-oasis-28"
    settings = Study(config).evaluate_label_settings()
    assert settings["groups"][3] == tuple(range(1000, 1036)) and settings["preset"] == tuple(settings["groups"])
    config["metrics"]["labels"] = [2, 3]
    assert Study(config).evaluate_label_settings() == {"args": ["--labels", "2,3"], "preset": None, "groups": None}
