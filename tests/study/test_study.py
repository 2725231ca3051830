"""Study planning (registration_core.study.plan): config validation, subjects, pairs, grid points, jobs."""

from __future__ import annotations

import copy
import csv
import re
from pathlib import Path

import pytest
import yaml

from registration_core.errors import InputError
from registration_core.study.config import ID_PATTERN, load_config, validate_config
from registration_core.study.grid import GRID_ID_PATTERN, format_value, grid_id
from registration_core.study.jobs import JOB_COLUMNS
from registration_core.study.plan import Study, demo_subject_id, demo_subject_index, exact_regex, write_jobs_table

from support.paths import REPO_ROOT

DEMO = {
    "study": "unit",
    "datasets": {"synthetic": {"adapter": "demo", "n_subjects": 4}},
    "pairs": {"atlases": ["demo-00"], "moving": "rest"},
    "methods": {"nodeo": {"params": {"iterations": 5}, "grid": {"smoothing_kernel": ["AK", "GK"], "lr": [0.005, 0.01]}}},
}


def config(**changes) -> dict:
    """The demo config with top-level keys replaced."""
    return {**copy.deepcopy(DEMO), **changes}


def folder_dataset(root: Path, subjects: list[str], labels: bool = True) -> Path:
    """A folder dataset with tiny (empty) files: <root>/<subject>/t1.nii.gz and labels.nii.gz."""
    for subject in subjects:
        (root / subject).mkdir(parents=True)
        (root / subject / "t1.nii.gz").write_bytes(b"")
        if labels:
            (root / subject / "labels.nii.gz").write_bytes(b"")
    return root


def folder_config(root: Path, **pairs) -> dict:
    spec = {"adapter": "folder", "path": str(root), "image": "{subject}/t1.nii.gz", "labels": "{subject}/labels.nii.gz"}
    return config(datasets={"brains": spec}, pairs=pairs or {"atlases": ["s01"], "moving": "rest"})


def error_of(cfg: dict, base_dir: Path | str = ".") -> str:
    with pytest.raises(InputError) as info:
        Study(cfg, base_dir)
    return str(info.value)


# ----------------------------------------------------------------------------- grid ids


def test_grid_id_follows_config_key_order_and_formats_values() -> None:
    assert grid_id({"smoothing_kernel": "AK", "lr": 0.005, "iterations": 20}) == "smoothing_kernel~AK__lr~0.005__iterations~20"
    assert grid_id({"lr": 1e-05, "adjoint": True}) == "lr~1e-05__adjoint~true"
    assert grid_id({}) == "default"
    assert re.fullmatch(GRID_ID_PATTERN, "smoothing_kernel~AK__lr~0.005__iterations~20")
    assert re.fullmatch(GRID_ID_PATTERN, "default")
    assert not re.fullmatch(GRID_ID_PATTERN, "lr~0.1/x")


def test_format_value_rejects_text_unfit_for_paths() -> None:
    assert format_value(False) == "false"
    assert format_value(60) == "60"
    for bad in ("a/b", "a b", "x~y", float("nan")):
        with pytest.raises(InputError):
            format_value(bad)


def test_subject_ids_cannot_hide_the_pair_separator() -> None:
    assert re.fullmatch(ID_PATTERN, "sub-01") and re.fullmatch(ID_PATTERN, "OAS1_0001_MR1")
    assert not re.fullmatch(ID_PATTERN, "a__b") and not re.fullmatch(ID_PATTERN, "a_") and not re.fullmatch(ID_PATTERN, "a/b")


# ----------------------------------------------------------------------------- planning


def test_jobs_are_method_x_grid_x_pairs_in_nesting_order() -> None:
    study = Study(config())
    assert study.dataset.subjects == ("demo-00", "demo-01", "demo-02", "demo-03")
    assert study.pairs == [("demo-00", "demo-01"), ("demo-00", "demo-02"), ("demo-00", "demo-03")]
    ids = [p.grid_id for p in study.grid["nodeo"]]
    assert ids == [
        "smoothing_kernel~AK__lr~0.005", "smoothing_kernel~AK__lr~0.01",
        "smoothing_kernel~GK__lr~0.005", "smoothing_kernel~GK__lr~0.01",
    ]
    assert len(study.jobs) == 4 * 3
    assert [(j.grid_id, j.moving) for j in study.jobs[:4]] == [
        (ids[0], "demo-01"), (ids[0], "demo-02"), (ids[0], "demo-03"), (ids[1], "demo-01"),
    ]
    point = study.grid_point("nodeo", ids[3])
    assert point.params == {"iterations": 5, "smoothing_kernel": "GK", "lr": 0.01}
    assert point.resolved["lr"] == 0.01 and point.resolved["iterations"] == 5
    assert study.jobs_by_rule() == {"demo_subject": 4, "prepare": 4, "qc": 4, "register": 12, "evaluate": 12}
    assert study.describe() == (
        "study unit: 4 subjects, 3 pairs, nodeo 4 grid points; "
        "jobs per rule: demo_subject 4, prepare 4, qc 4, register 12, evaluate 12"
    )


def test_method_without_grid_has_one_default_point() -> None:
    study = Study(config(methods={"nodeo": {}}))
    assert [p.grid_id for p in study.grid["nodeo"]] == ["default"]
    assert study.factors == [] and study.config["anova"]["factors"] == []
    assert study.jobs[0].path("reg_dir") == "results/unit/reg/nodeo/default/demo-00__demo-01"


def test_paths_follow_the_file_contract() -> None:
    study = Study(config())
    job = study.jobs[0]
    assert job.path("metrics") == "results/unit/eval/nodeo/smoothing_kernel~AK__lr~0.005/demo-00__demo-01.json"
    assert study.path("reg_dir") == "results/unit/reg/{method}/{grid_id}/{atlas}__{moving}"
    assert study.path("prep_image", subject="demo-02") == "results/unit/prep/demo-02/image.nii.gz"
    assert study.dataset.files["demo-01"] == {
        "image": "results/unit/data/demo-01/image.nii.gz", "labels": "results/unit/data/demo-01/labels.nii.gz",
    }


def test_defaults_are_filled_in() -> None:
    resolved = Study(config()).config
    assert resolved["metrics"] == {"labels": "all"}
    assert resolved["anova"] == {
        "responses": ["dice_mean", "neg_jac_ratio"], "model": "repeated", "seed": 0, "factors": ["smoothing_kernel", "lr"],
        "alpha": 0.05,
    }
    assert resolved["resources"]["register"] == {"threads": 1, "mem_mb": 4000, "runtime": 120}
    assert resolved["datasets"]["synthetic"] == {
        "adapter": "demo", "n_subjects": 4, "preprocess": [], "seed": 0, "spacing_mm": 2.0, "max_disp_mm": 8.0,
    }
    assert resolved["use_gpu"] is False and resolved["max_jobs"] == 20000
    assert "params" in resolved["methods"]["nodeo"] and DEMO["methods"]["nodeo"].get("resources") is None


def test_partial_resources_keep_the_other_defaults_and_methods_override() -> None:
    cfg = config(resources={"register": {"threads": 2}})
    cfg["methods"]["nodeo"]["resources"] = {"mem_mb": 900}
    study = Study(cfg)
    assert study.register_resources("nodeo") == {"threads": 2, "mem_mb": 900, "runtime": 120, "gpu": 0, "cpus_per_gpu": 0}


def test_register_resources_grow_with_the_image_and_the_attempt() -> None:
    """With the fixed image's shape, memory and time are estimates floored by the config values."""
    study = Study(config(resources={"register": {"threads": 1, "mem_mb": 500, "runtime": 1}}))
    grid_id = study.grid["nodeo"][0].grid_id
    small = study.register_resources("nodeo", grid_id, (80, 96))
    large = study.register_resources("nodeo", grid_id, (160, 192, 144))
    retry = study.register_resources("nodeo", grid_id, (160, 192, 144), attempt=2)
    assert small["mem_mb"] >= 500 and large["mem_mb"] > 2 * small["mem_mb"] and large["runtime"] > small["runtime"]
    assert retry["mem_mb"] > large["mem_mb"] and retry["runtime"] > large["runtime"]
    floored = Study(config(resources={"register": {"threads": 1, "mem_mb": 64000, "runtime": 1}}))
    assert floored.register_resources("nodeo", grid_id, (80, 96))["mem_mb"] == 64000


def test_use_gpu_requests_a_gpu_and_cuda_for_torch_methods() -> None:
    study = Study(config(use_gpu=True))
    assert study.register_resources("nodeo")["gpu"] == 1
    assert all(p.params["device"] == "cuda" for p in study.grid["nodeo"])


def test_explicit_pairs_and_moving_lists() -> None:
    study = Study(config(pairs={"list": [["demo-01", "demo-02"], ["demo-03", "demo-00"]]}))
    assert study.pairs == [("demo-01", "demo-02"), ("demo-03", "demo-00")]
    study = Study(config(pairs={"atlases": ["demo-00", "demo-01"], "moving": ["demo-02", "demo-03"]}))
    assert study.pairs == [("demo-00", "demo-02"), ("demo-00", "demo-03"), ("demo-01", "demo-02"), ("demo-01", "demo-03")]
    assert len(study.jobs) == 4 * 4


def test_jobs_table_has_the_contract_columns(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config(), sort_keys=False))
    out = tmp_path / "out" / "jobs.tsv"
    assert write_jobs_table(path, out) == 12
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == [*JOB_COLUMNS, "smoothing_kernel", "lr"]
    assert rows[5]["grid_id"] == "smoothing_kernel~AK__lr~0.01" and rows[5]["lr"] == "0.01"
    assert rows[5]["log"] == f"{rows[5]['reg_dir']}/log.json"
    assert {r["smoothing_kernel"] for r in rows} == {"AK", "GK"}


def test_folder_dataset_discovers_subjects(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "data", ["s01", "s02", "s03"])
    study = Study(folder_config(root))
    assert study.dataset.subjects == ("s01", "s02", "s03")
    assert study.dataset.files["s02"]["labels"] == str(root / "s02" / "labels.nii.gz")
    assert study.pairs == [("s01", "s02"), ("s01", "s03")]
    cfg = folder_config(root)
    cfg["datasets"]["brains"]["subjects"] = ["s03", "s01"]
    assert Study(cfg).pairs == [("s01", "s03")]


def test_relative_dataset_paths_start_at_base_dir(tmp_path: Path) -> None:
    folder_dataset(tmp_path / "data", ["s01", "s02"])
    cfg = folder_config(Path("data"))
    assert Study(cfg, tmp_path).dataset.files["s02"]["image"] == str(tmp_path / "data" / "s02" / "t1.nii.gz")


def test_large_study_needs_confirmation() -> None:
    message = error_of(config(max_jobs=10))
    assert "max_jobs" in message and "12 registration jobs" in message and "confirm_large_study" in message
    assert len(Study(config(max_jobs=10, confirm_large_study=True)).jobs) == 12


def test_label_arguments_of_evaluate(tmp_path: Path) -> None:
    assert Study(config()).evaluate_label_args() == []
    assert Study(config(metrics={"labels": [2, 3]})).evaluate_label_args() == ["--labels", "2,3"]
    (tmp_path / "labels.txt").write_text("2\n3\n")
    study = Study(config(metrics={"labels": "labels.txt"}), tmp_path)
    assert study.evaluate_label_args() == ["--labels-file", str(tmp_path / "labels.txt")]
    with pytest.raises(InputError, match="metrics.labels"):
        Study(config(metrics={"labels": "missing.txt"}), tmp_path).evaluate_label_args()


# ----------------------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"colour": "red"}, r"^config: unknown key colour \(allowed: anova, confirm_large_study, datasets, max_jobs"),
        ({"study": "a/b"}, r"^config key study: 'a/b' does not match"),
        ({"methods": {"nodeo": {"grid": {"lr": [0.01, -1]}}}}, r"^config key methods\.nodeo\.grid\.lr: .*'lr' must be a number > 0, got -1"),
        ({"methods": {"nodeo": {"grid": {"lr": 0.01}}}}, r"^config key methods\.nodeo\.grid\.lr: 0\.01 is not of type 'array'"),
        ({"methods": {"nodeo": {"grid": {"lr": []}}}}, r"^config key methods\.nodeo\.grid\.lr: \[\] should be non-empty"),
        ({"methods": {"nodeo": {"grid": {"lrr": [0.01]}}}}, r"^config key methods\.nodeo\.grid\.lrr: unknown parameter of method nodeo \(allowed: .*lr,"),
        ({"methods": {"nodeo": {"params": {"ode_method": "magic"}}}}, r"^config key methods\.nodeo\.params: .*'ode_method' must be one of"),
        ({"methods": {"nodeo": {"params": {"lr": 0.1}, "grid": {"lr": [0.01]}}}}, r"^config key methods\.nodeo\.grid\.lr: also set in methods\.nodeo\.params"),
        ({"methods": {"nodeo": {"grid": {"smoothing_kernel": ["AK", "AK"]}}}}, r"^config key methods\.nodeo\.grid\.smoothing_kernel: .*non-unique"),
        ({"methods": {"nodeo": {"grids": {}}}}, r"^config key methods\.nodeo: unknown key grids \(allowed: grid, params, resources, train\)"),
        ({"methods": {"magic": {}}}, r"^config key methods\.magic: unknown method \(available: .*nodeo"),
        ({"anova": {"factors": ["iterations"]}}, r"^config key anova\.factors: 'iterations' is not a grid key \(allowed: smoothing_kernel, lr, method\)"),
        ({"anova": {"responses": ["dice"]}}, r"^config key anova\.responses\[0\]: 'dice' is not allowed \(allowed: dice_mean,"),
        ({"anova": {"alpha": 1.5}}, r"^config key anova\.alpha: 1\.5 is greater than or equal to the maximum of 1"),
        ({"pairs": {"atlases": ["demo-00"], "moving": ["demo-00", "demo-01"]}}, r"^config key pairs\.moving: atlas 'demo-00' is among its own moving images"),
        ({"pairs": {"atlases": ["demo-09"], "moving": "rest"}}, r"^config key pairs\.atlases: subject 'demo-09' is not in dataset synthetic"),
        ({"pairs": {"list": [["demo-01", "demo-01"]]}}, r"^config key pairs\.list\[0\]: 'demo-01' is paired with itself"),
        ({"pairs": {"list": [["demo-01", "demo-02"], ["demo-01", "demo-02"]]}}, r"^config key pairs\.list: a pair is listed twice"),
        ({"pairs": {"atlases": ["demo-00"], "moving": "rest", "list": [["demo-01", "demo-02"]]}}, r"^config key pairs: not a valid value; expected: Which images are registered"),
        ({"pairs": {"dataset": "other", "atlases": ["demo-00"], "moving": "rest"}}, r"^config key pairs\.dataset: 'other' is not a dataset \(datasets: synthetic\)"),
        ({"datasets": {"synthetic": {"adapter": "demo", "n_subject": 4}}}, r"^config key datasets\.synthetic: unknown key n_subject \(allowed: adapter, align, make_mask, max_disp_mm, n_subjects,"),
        ({"datasets": {"synthetic": {"adapter": "zip"}}}, r"^config key datasets\.synthetic\.adapter: 'zip' is not allowed \(allowed: folder, neurite-oasis, dirlab, learn2reg, fire, demo, truth\)"),
        ({"datasets": {"synthetic": {"adapter": "demo", "preprocess": [{"step": "slice", "axis": 3}]}}}, r"^config key datasets\.synthetic\.preprocess: .*steps\[0\] \(slice\): setting 'axis'"),
        ({"resources": {"register": {"threads": 0}}}, r"^config key resources\.register\.threads: 0 is less than the minimum of 1"),
    ],
)
def test_bad_config_names_the_key(changes: dict, expected: str) -> None:
    assert re.search(expected, error_of(config(**changes))), error_of(config(**changes))


def test_folder_dataset_errors_name_the_dataset(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "data", ["s01", "s02"], labels=False)
    assert re.search(r"^config key datasets\.brains: subject 's01': labels file .* not found", error_of(folder_config(root)))
    cfg = folder_config(root)
    del cfg["datasets"]["brains"]["path"]
    assert error_of(cfg).startswith("config key datasets.brains.path: None is not allowed")
    bad_id = folder_dataset(tmp_path / "ids", ["a__b", "c"])
    assert "subject id 'a__b'" in error_of(folder_config(bad_id, atlases=["c"], moving="rest"))


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("study: [unclosed\n")
    with pytest.raises(InputError, match=r"bad.yaml: not valid YAML on line 2"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(InputError, match="empty.yaml: config file is empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(config(extra=1)))
    with pytest.raises(InputError, match=r"unknown.yaml: config: unknown key extra"):
        load_config(tmp_path / "unknown.yaml")


def test_validation_does_not_modify_its_input() -> None:
    raw = config()
    validate_config(raw)
    assert raw == DEMO




def test_demo_config_plans_the_demo_design() -> None:
    study = Study(load_config(REPO_ROOT / "config" / "config.yaml"), REPO_ROOT)
    assert study.dataset.adapter == "demo" and len(study.pairs) == 4
    assert len(study.grid["nodeo"]) == 8 and len(study.jobs) == 32
    assert study.config["anova"]["factors"] == ["smoothing_kernel", "lr", "iterations"]


@pytest.mark.realdata
def test_example_studies_are_valid(shared_data: Path) -> None:
    paths = sorted((REPO_ROOT / "config" / "studies").glob("*.yaml"))
    assert paths
    for path in paths:
        assert Study(load_config(path), REPO_ROOT).jobs, path


def test_demo_subject_ids_round_trip() -> None:
    assert [demo_subject_index(demo_subject_id(i)) for i in (0, 7, 42)] == [0, 7, 42]
    with pytest.raises(InputError, match="not a demo subject"):
        demo_subject_index("sub-01")


# ----------------------------------------------------------------------------- datasets from the manifest


def touch_files(root: Path, subjects: list[str], names: list[str]) -> Path:
    """Empty per-subject files ``<root>/<subject>/<name>`` (enough for planning)."""
    for subject in subjects:
        (root / subject).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / subject / name).write_bytes(b"")
    return root


def landmark_config(root: Path, **dataset) -> dict:
    """A labels-free folder dataset with landmarks, s01 the atlas."""
    spec = {"adapter": "folder", "path": str(root), "image": "{subject}/t1.nii.gz", "landmarks": "{subject}/points.csv", **dataset}
    return config(datasets={"points": spec}, pairs={"atlases": ["s01"], "moving": "rest"})


def test_optional_files_follow_the_dataset(tmp_path: Path) -> None:
    root = touch_files(tmp_path / "data", ["s01", "s02", "s03"], ["t1.nii.gz", "points.csv"])
    study = Study(landmark_config(root))
    assert study.subject_kinds("s02") == ("landmarks",)
    assert study.prepared_files("s02") == {
        "image": "results/unit/prep/s02/image.nii.gz", "landmarks": "results/unit/prep/s02/landmarks.csv",
    }
    assert study.pair_files("s01", "s03") == {
        "fixed": "results/unit/prep/s01/image.nii.gz", "moving": "results/unit/prep/s03/image.nii.gz",
        "fixed_landmarks": "results/unit/prep/s01/landmarks.csv", "moving_landmarks": "results/unit/prep/s03/landmarks.csv",
    }
    assert study.owner("s02").files["s02"] == {"image": str(root / "s02" / "t1.nii.gz"), "landmarks": str(root / "s02" / "points.csv")}
    assert study.pair_kinds("s01", "s02") == ("landmarks",)


def test_pair_uses_labels_only_when_both_subjects_have_them(tmp_path: Path) -> None:
    study = Study(config())
    assert study.pair_kinds("demo-00", "demo-01") == ("labels",)
    assert set(study.pair_files("demo-00", "demo-01")) == {"fixed", "moving", "fixed_labels", "moving_labels"}
    assert study.variants([("labels",), (), ("labels", "landmarks"), ("labels",)]) == [("labels", "landmarks"), ("labels",), ()]


def test_adapter_keys_are_checked_by_the_adapter(tmp_path: Path) -> None:
    root = touch_files(tmp_path / "data", ["s01", "s02"], ["t1.nii.gz", "points.csv"])
    message = error_of(landmark_config(root, colour="red"))
    assert message.startswith("config key datasets.points: unknown key colour (allowed: adapter, align, image, labels, landmarks, make_mask, mask,")
    assert error_of(landmark_config(root, landmarks="{subject}/missing.csv")).startswith("config key datasets.points: subject 's01': landmarks file")


def test_dataset_defined_pairs(tmp_path: Path) -> None:
    root = touch_files(tmp_path / "data", ["s01", "s02", "s03"], ["t1.nii.gz", "points.csv"])
    cfg = landmark_config(root, pairs=[["s02", "s01"], ["s03", "s01"]])
    cfg["pairs"] = {"dataset": "points"}
    assert Study(cfg).pairs == [("s02", "s01"), ("s03", "s01")]
    cfg["datasets"]["points"].pop("pairs")
    assert error_of(cfg) == "config key pairs: dataset points (folder) defines no pairs; give atlases and moving, or a list"
    cfg["pairs"] = {"dataset": "points", "atlases": ["s01"]}
    assert error_of(cfg).startswith("config key pairs: not a valid value; expected: Which images are registered")


def test_align_replaces_the_moving_files_by_aligned_ones(tmp_path: Path) -> None:
    root = touch_files(tmp_path / "data", ["s01", "s02"], ["t1.nii.gz", "points.csv"])
    study = Study(landmark_config(root, align={"transform": "rigid", "iterations": 50}))
    assert study.owner("s02").align == {"transform": "rigid", "iterations": 50}
    assert study.aligned_pairs() == [("s01", "s02")]
    files = study.pair_files("s01", "s02")
    assert files["moving"] == "results/unit/aligned/s01__s02/image.nii.gz"
    assert files["moving_landmarks"] == "results/unit/aligned/s01__s02/landmarks.csv"
    assert files["fixed"] == "results/unit/prep/s01/image.nii.gz"
    assert study.jobs_by_rule()["align"] == 1
    assert re.match(r"^config key datasets\.points\.align: affine_align: unknown setting 'levels'", error_of(landmark_config(root, align={"levels": 3})))
    assert re.match(r"^config key datasets\.points\.align: affine_align: setting 'transform'", error_of(landmark_config(root, align={"transform": "spline"})))


def test_lung_mask_is_made_per_subject_and_goes_to_evaluation(tmp_path: Path) -> None:
    root = touch_files(tmp_path / "data", ["s01", "s02"], ["t1.nii.gz", "points.csv"])
    study = Study(landmark_config(root, make_mask={"step": "lung_mask", "lung_hu": -450}))
    assert study.owner("s01").mask == {"lung_hu": -450}
    assert study.owner("s01").files["s01"]["mask"] == "results/unit/data/s01/mask.nii.gz"
    assert study.prepared_files("s01")["mask"] == "results/unit/prep/s01/mask.nii.gz"
    assert study.pair_files("s01", "s02")["mask"] == "results/unit/prep/s01/mask.nii.gz"
    assert study.jobs_by_rule()["make_mask"] == 2
    assert "config key datasets.points.make_mask: preprocessing steps[0] (lung_mask): unknown setting 'lung'" in error_of(
        landmark_config(root, make_mask={"step": "lung_mask", "lung": 1})
    )
    message = error_of(landmark_config(root, make_mask={"step": "otsu"}))
    assert message.startswith("config key datasets.points.make_mask.step: 'otsu' is not allowed (allowed: lung_mask)")


def truth_config(root: Path, **truth) -> dict:
    """A thorax folder dataset (one CT with a lung mask) and a truth dataset of two pairs made from it."""
    thorax = {"adapter": "folder", "path": str(root), "image": "{subject}/t1.nii.gz", "make_mask": {"step": "lung_mask"},
              "preprocess": [{"step": "resample", "spacing": 2.0}]}
    settings = {"adapter": "truth", "base": "thorax", "subject": "ct", "motion": "respiratory", "max_disp_mm": 15,
                "n_pairs": 2, "seed": 5, **truth}
    return config(datasets={"thorax": thorax, "breathing": settings}, pairs={"dataset": "breathing"})


def test_truth_pairs_deform_a_prepared_subject(tmp_path: Path) -> None:
    root = touch_files(tmp_path / "data", ["ct", "other"], ["t1.nii.gz"])
    study = Study(truth_config(root, noise_std=0.01))
    assert study.pairs == [("ct", "ct-m0"), ("ct", "ct-m1")]
    assert study.dataset.subjects == ("ct", "ct-m0", "ct-m1") and study.dataset.adapter == "truth"
    assert study.prepared_subjects() == ["ct"]
    assert study.truth is not None and study.truth.cli_args("ct-m1") == [
        "--motion", "respiratory", "--max-disp-mm", "15", "--noise-std", "0.01", "--seed", "6", "--n-landmarks", "100",
    ]
    truth = "results/unit/truth/ct-m1"
    assert study.pair_files("ct", "ct-m1") == {
        "fixed": "results/unit/prep/ct/image.nii.gz", "moving": f"{truth}/moving.nii.gz",
        "fixed_landmarks": f"{truth}/fixed_landmarks.csv", "moving_landmarks": f"{truth}/moving_landmarks.csv",
        "truth_displacement": f"{truth}/truth_displacement.nii.gz", "mask": "results/unit/prep/ct/mask.nii.gz",
    }
    assert set(study.truth_files()) == {"fixed", "moving", "mask", "truth_displacement", "fixed_landmarks", "moving_landmarks"}
    assert study.jobs_by_rule() == {
        "make_mask": 1, "preprocess": 1, "qc": 1, "synth_pair": 2, "register": 8, "evaluate": 8,
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"base": "nothing"}, r"^config key datasets\.breathing\.base: 'nothing' is not a dataset to deform \(datasets: thorax\)"),
        ({"subject": "sub-09"}, r"^config key datasets\.breathing\.subject: subject 'sub-09' is not in dataset thorax"),
        ({"motion": "cardiac"}, r"^config key datasets\.breathing\.motion: 'cardiac' is not allowed \(allowed: respiratory, respiratory-inhale, single, mixed\)"),
        ({"max_disp_mm": 0}, r"^config key datasets\.breathing\.max_disp_mm: 0 is less than or equal to the minimum of 0"),
        ({"preprocess": [{"step": "normalize"}]}, r"^config key datasets\.breathing\.preprocess: a truth dataset uses the prepared base subject"),
        ({"sigma": 3}, r"^config key datasets\.breathing: unknown key sigma \(allowed: .*max_disp_mm, motion, n_landmarks, n_pairs"),
    ],
)
def test_bad_truth_settings_name_the_key(tmp_path: Path, changes: dict, expected: str) -> None:
    root = touch_files(tmp_path / "data", ["ct"], ["t1.nii.gz"])
    message = error_of(truth_config(root, **changes))
    assert re.search(expected, message), message


def test_subject_ids_are_unique_across_datasets(tmp_path: Path) -> None:
    touch_files(tmp_path / "a", ["s01", "s02"], ["t1.nii.gz"])
    touch_files(tmp_path / "b", ["s02", "s03"], ["t1.nii.gz"])
    cfg = config(
        datasets={name: {"adapter": "folder", "path": str(tmp_path / name), "image": "{subject}/t1.nii.gz"} for name in "ab"},
        pairs={"dataset": "a", "list": [["s01", "s02"]]},
    )
    assert Study(cfg).prepared_subjects() == ["s01", "s02"]  # dataset b is not used: not read
    cfg["datasets"]["t"] = {"adapter": "truth", "base": "b", "subject": "s03", "motion": "single", "max_disp_mm": 5}
    cfg["pairs"] = {"dataset": "t"}
    assert Study(cfg).pairs == [("s03", "s03-m0")]


def test_train_is_for_learned_methods_only() -> None:
    cfg = config()
    cfg["methods"]["nodeo"]["train"] = {"subjects": ["demo-01", "demo-02"]}
    assert re.match(r"^config key methods\.nodeo\.train: nodeo is not a learned method \(learned: ", error_of(cfg))
    cfg["methods"]["nodeo"]["train"] = {"subject": ["demo-01"]}
    assert error_of(cfg).startswith("config key methods.nodeo.train: unknown key subject (allowed: align_to, dataset, subjects, val_subjects)")


def test_exact_regex_matches_exactly_the_subjects() -> None:
    regex = exact_regex(["s1", "s10", "a.b"])
    assert [bool(re.fullmatch(regex, s)) for s in ("s1", "s10", "a.b", "s100", "aXb")] == [True, True, True, False, False]
    assert re.fullmatch(exact_regex([]), "") is None and re.fullmatch(exact_regex([]), "s1") is None


def learned_config(**train) -> dict:
    """VoxelMorph trained on demo-03, 04 (validation 05, 06) and NODEO, both tested on demo-00 -> demo-01, demo-02."""
    cfg = config(datasets={"synthetic": {"adapter": "demo", "n_subjects": 7}})
    cfg["pairs"] = {"atlases": ["demo-00"], "moving": ["demo-01", "demo-02"]}
    cfg["methods"]["voxelmorph"] = {
        "train": {"subjects": ["demo-03", "demo-04"], "val_subjects": ["demo-05", "demo-06"], **train},
        "params": {"steps": 10}, "grid": {"lr": [0.001, 0.0001]},
    }
    return cfg


def test_learned_method_is_trained_per_grid_point_on_other_subjects() -> None:
    study = Study(learned_config())
    assert study.trained_models() == [("voxelmorph", "lr~0.001"), ("voxelmorph", "lr~0.0001")]
    assert study.training["voxelmorph"].subjects == ("demo-03", "demo-04") and study.training["nodeo"] is None
    assert study.register_params("voxelmorph", "lr~0.001") == {
        "steps": 10, "lr": 0.001, "checkpoint": "results/unit/train/voxelmorph/lr~0.001/model.pt",
    }
    assert study.train_params("voxelmorph", "lr~0.0001") == {"steps": 10, "lr": 0.0001}
    assert "checkpoint" not in study.register_params("nodeo", study.grid["nodeo"][0].grid_id)
    assert study.train_files("voxelmorph") == {
        "images": ["results/unit/prep/demo-03/image.nii.gz", "results/unit/prep/demo-04/image.nii.gz"],
        "labels": ["results/unit/prep/demo-03/labels.nii.gz", "results/unit/prep/demo-04/labels.nii.gz"],
        "val_images": ["results/unit/prep/demo-05/image.nii.gz", "results/unit/prep/demo-06/image.nii.gz"],
        "val_labels": ["results/unit/prep/demo-05/labels.nii.gz", "results/unit/prep/demo-06/labels.nii.gz"],
    }
    assert study.prepared_subjects() == [f"demo-0{i}" for i in range(7)]
    assert study.jobs_by_rule() == {"demo_subject": 7, "prepare": 7, "qc": 7, "train": 2, "register": 12, "evaluate": 12}


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ({"subjects": ["demo-01", "demo-03"]}, "config key methods.voxelmorph.train.subjects: 'demo-01' is also in the test pairs"),
        ({"val_subjects": ["demo-00"]}, "config key methods.voxelmorph.train.val_subjects: 'demo-00' is also in the test pairs"),
        ({"val_subjects": ["demo-04", "demo-05"]}, "config key methods.voxelmorph.train.val_subjects: 'demo-04' is also a training subject"),
        ({"val_subjects": ["demo-05"]}, "config key methods.voxelmorph.train.val_subjects: give at least 2 subjects (validation pairs) or none"),
        ({"subjects": ["demo-03"]}, "config key methods.voxelmorph.train.subjects: ['demo-03'] is too short"),
        ({"subjects": ["demo-03", "demo-09"]}, "config key methods.voxelmorph.train.subjects: subject 'demo-09' is not in dataset synthetic"),
        ({"dataset": "other"}, "config key methods.voxelmorph.train.dataset: 'other' is not a dataset (datasets: synthetic)"),
    ],
)
def test_training_subjects_must_differ_from_the_test_subjects(train: dict, expected: str) -> None:
    assert error_of(learned_config(**train)).startswith(expected)


def test_learned_method_needs_training_or_a_checkpoint() -> None:
    cfg = learned_config()
    del cfg["methods"]["voxelmorph"]["train"]
    assert error_of(cfg).startswith("config key methods.voxelmorph.train: required for the learned method voxelmorph")
    cfg["methods"]["voxelmorph"]["params"]["checkpoint"] = "models/vxm.pt"
    study = Study(cfg)
    assert study.trained_models() == [] and study.register_params("voxelmorph", "lr~0.001")["checkpoint"] == "models/vxm.pt"
    cfg = learned_config()
    cfg["methods"]["voxelmorph"]["params"]["checkpoint"] = "models/vxm.pt"
    assert error_of(cfg).startswith("config key methods.voxelmorph.params.checkpoint: the workflow trains voxelmorph")


def test_grid_points_differing_in_instance_optimisation_share_a_model() -> None:
    cfg = learned_config()
    cfg["methods"]["voxelmorph"]["grid"]["io_steps"] = [0, 20]
    study = Study(cfg)
    assert [p.grid_id for p in study.grid["voxelmorph"]][:2] == ["lr~0.001__io_steps~0", "lr~0.001__io_steps~20"]
    assert study.trained_models() == [("voxelmorph", "lr~0.001"), ("voxelmorph", "lr~0.0001")]
    assert study.register_params("voxelmorph", "lr~0.001__io_steps~20")["checkpoint"] == "results/unit/train/voxelmorph/lr~0.001/model.pt"
    assert study.train_params("voxelmorph", "lr~0.001") == {"steps": 10, "lr": 0.001}
    cfg["methods"]["voxelmorph"]["grid"] = {"io_steps": [0, 20]}
    assert Study(cfg).trained_models() == [("voxelmorph", "default")]


def test_training_images_can_be_aligned_to_a_subject() -> None:
    cfg = learned_config(align_to="demo-00")
    error = error_of(cfg)
    assert error == "config key methods.voxelmorph.train.align_to: dataset synthetic has no align settings (datasets.synthetic.align)"
    cfg["datasets"]["synthetic"]["align"] = {"transform": "affine"}
    study = Study(cfg)
    assert study.train_files("voxelmorph")["images"] == [
        "results/unit/aligned/demo-00__demo-03/image.nii.gz", "results/unit/aligned/demo-00__demo-04/image.nii.gz",
    ]
    assert study.train_files("voxelmorph")["val_labels"][1] == "results/unit/aligned/demo-00__demo-06/labels.nii.gz"
    assert study.aligned_pairs() == [("demo-00", f"demo-0{i}") for i in (1, 2, 3, 4, 5, 6)]
    assert study.jobs_by_rule()["align"] == 6
    assert error_of(learned_config(align_to="demo-09")).startswith("config key methods.voxelmorph.train.align_to: subject 'demo-09'")


def test_preprocessing_steps_chain_stage_files_and_share_the_reference_stage(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "data", ["s01", "s02", "s03"])
    cfg = folder_config(root)
    cfg["pairs"] = {"atlases": ["s01"], "moving": ["s03"]}
    steps = [
        {"step": "reorient"}, {"step": "affine_align", "reference": "s02", "transform": "rigid"}, {"step": "slice", "axis": 2},
    ]
    cfg["datasets"]["brains"]["preprocess"] = steps
    study = Study(cfg)
    assert study.owner("s01").reference == "s02"
    stage = "results/unit/prep/{}/stages/{}/{}"
    raw = {"image": f"{root}/s01/t1.nii.gz", "labels": f"{root}/s01/labels.nii.gz"}
    assert study.step_inputs("s01", 1) == raw == study.stage_files("s01", 0)
    assert study.step_inputs("s01", 2) == {
        "image": stage.format("s01", "1-reorient", "image.nii.gz"), "labels": stage.format("s01", "1-reorient", "labels.nii.gz"),
        "reference": stage.format("s02", "1-reorient", "image.nii.gz"),
    }
    assert study.step_inputs("s01", 3) == {
        "image": stage.format("s01", "2-affine_align", "image.nii.gz"),
        "labels": stage.format("s01", "2-affine_align", "labels.nii.gz"),
    }
    assert study.stage_files("s01", 3) == study.prepared_files("s01")
    # s02 is only the reference: its steps before the affine_align step run, nothing after
    assert study.staged_subjects() == ["s01", "s02", "s03"] and study.prepared_subjects() == ["s01", "s03"]
    assert study.jobs_by_rule()["preprocess"] == 3 + 3 + 1 and "prepare" not in study.jobs_by_rule()
    cfg["datasets"]["brains"]["preprocess"] = []
    study = Study(cfg)
    assert study.staged_subjects() == ["s01", "s03"] and study.jobs_by_rule()["prepare"] == 2
    assert "preprocess" not in study.jobs_by_rule()


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([{"step": "normalize"}, {"step": "affine_align", "reference": "s09"}],
         r"^config key datasets\.brains\.preprocess\[1\]\.reference: subject 's09' is not in dataset brains"),
        ([{"step": "affine_align", "reference": "s01"}, {"step": "affine_align", "reference": "s02"}],
         r"^config key datasets\.brains\.preprocess\[1\]\.reference: 's02' differs from the earlier reference 's01'"),
        ([{"step": "affine_align"}],
         r"^config key datasets\.brains\.preprocess: preprocessing steps\[0\] \(affine_align\): 'reference' is a required"),
        ([{"step": "affine_align", "reference": "s01", "transform": "spline"}],
         r"^config key datasets\.brains\.preprocess: preprocessing steps\[0\] \(affine_align\): setting 'transform'"),
    ],
)
def test_bad_reference_alignment_step_names_the_key(tmp_path: Path, steps: list[dict], expected: str) -> None:
    cfg = folder_config(folder_dataset(tmp_path / "data", ["s01", "s02"]))
    cfg["datasets"]["brains"]["preprocess"] = steps
    assert re.match(expected, error_of(cfg))
