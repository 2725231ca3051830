"""Tests of registration_core.report on a tiny synthetic 2D study (real files, no mocks)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_aggregate import write_study

from registration_core.core.io import load_image, save_displacement
from registration_core.errors import InputError
from registration_core.evaluation.aggregate import aggregate_study
from registration_core.evaluation.stats import run_anova_study
from registration_core.report import build_report
from registration_core.report.examples import axial_axis, example_figure, load_example
from registration_core.report.plots import png_bytes

SECTION_IDS = ("config", "summary", "dice", "runtime", "loss", "metrics", "anova", "examples", "provenance")
SHAPE = (24, 20)
CONFIG = """study: tiny
# datasets from https://example.org are described here, not linked
methods:
  nodeo:
    grid: {lr: [0.001, 0.01], kernel: [AK, GK]}
  demons: {}
anova: {responses: [dice_mean, neg_jac_ratio], factors: [lr, kernel], alpha: 0.05}
"""


def blob(center: tuple[float, float]) -> np.ndarray:
    """(24, 20) Gaussian blob image, float32."""
    ii, jj = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return np.exp(-((ii - center[0]) ** 2 + (jj - center[1]) ** 2) / 18.0).astype(np.float32)


def write_nifti(data: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.0, 1.0, 1.0])), str(path))
    return path


def make_reg_dir_writer(root: Path):
    """A ``write_reg_dir`` for write_study: shared fixed/moving images, per-job warped image and field."""
    images = root / "images"
    images.mkdir()
    fixed = write_nifti(blob((12, 10)), images / "fixed.nii.gz")
    moving = write_nifti(blob((14, 9)), images / "moving.nii.gz")

    def write(reg_dir: Path, spec: dict) -> dict:
        shift = 0.5 * (spec["pair"] + 1)
        write_nifti(blob((12 + shift, 10)), reg_dir / "warped.nii.gz")
        ii, jj = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
        disp_vox = np.stack([shift * np.sin(np.pi * jj / 19), 0.5 * np.cos(np.pi * ii / 23)]).astype(np.float32)
        save_displacement(disp_vox, load_image(fixed), reg_dir / "displacement.nii.gz")
        return {"fixed": str(fixed), "moving": str(moving)}

    return write


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """results/tiny with aggregates and ANOVA, plus its config; returns (study_dir, config)."""
    root = tmp_path_factory.mktemp("results") / "tiny"
    root.mkdir()
    jobs = write_study(root, make_reg_dir_writer(root))
    aggregate_study(jobs, root)
    run_anova_study(root / "metrics.csv", ["dice_mean", "neg_jac_ratio"], ["lr", "kernel"], 0.05, root / "anova")
    config = root / "config.yaml"
    config.write_text(CONFIG)
    return root, config


@pytest.fixture(scope="module")
def report(study: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path], Path]:
    out = tmp_path_factory.mktemp("reports") / "tiny" / "index.html"
    figures = build_report(*study, out)
    return out.read_text(encoding="utf-8"), figures, out


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_report_is_self_contained(report: tuple[str, list[Path], Path]) -> None:
    html, figures, _ = report
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in html
        assert f'href="#{section}"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, flags=re.IGNORECASE)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == len(figures) >= 8
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "https://example.org" in html  # the config's text is shown, escaped, in a <pre>
    assert "<h1>Registration study: tiny</h1>" in html


def test_report_figures_written_next_to_html(report: tuple[str, list[Path], Path]) -> None:
    _, figures, out = report
    names = {path.name for path in figures}
    assert {"dice_mean.png", "dice_per_label.png", "runtime.png", "loss_curves.png"} <= names
    assert {"example_best.png", "example_median.png", "example_worst.png", "anova_interaction_dice_mean.png"} <= names
    for path in figures:
        assert path.parent == out.parent / "figures"
        width, height = _png_size(path)
        assert width > 200 and height > 100


def test_report_content(report: tuple[str, list[Path], Path]) -> None:
    html = report[0]
    best_rows = re.findall(r"<tr class=best>(.*?)</tr>", html)
    assert len(best_rows) == 2  # one best grid point per method in the summary table (+ none in ANOVA)
    assert "<td>nodeo</td><td class=num>0.01</td><td>GK</td>" in best_rows[0]
    assert "best pair: nodeo · lr=0.01, kernel=GK, A1 ← M3" in html
    assert "worst pair: demons, A1 ← M2" in html
    statistics = html[html.index('<section id="anova">'):]
    assert statistics.index("<h3>Conclusions</h3>") < statistics.index("<table>")  # conclusions open the section
    assert re.search(r"<li>lr: (0\.01 beats 0\.001|0\.001 and 0\.01 are not distinguishable)", statistics)
    assert "levels compared within pairs" in statistics and "Repeated-measures analysis" in statistics
    assert "Methods head to head on the same pairs" in statistics and "best grid point:" in statistics
    metrics = html[html.index('<section id="metrics">'):html.index('<section id="anova">')]
    assert "<td>dice_mean</td><td>higher</td>" in metrics and "surface-distance" in metrics
    assert "<b>3</b> pairs" in html and "<b>2</b> methods" in html and "<b>5</b> grid points" in html


def test_report_without_optional_parts(study: tuple[Path, Path], tmp_path: Path) -> None:
    """No labels (no Dice), no loss history, no ANOVA: messages instead of sections' content."""
    source, config = study
    study_dir = tmp_path / "bare"
    study_dir.mkdir()
    (study_dir / "jobs.tsv").write_bytes((source / "jobs.tsv").read_bytes())
    metrics = pd.read_csv(source / "metrics.csv").drop(columns=["dice_mean", "dice_mean_before"])
    metrics.to_csv(study_dir / "metrics.csv", index=False)
    summary = pd.read_csv(source / "summary.csv")
    summary.drop(columns=[c for c in summary if c.startswith("dice_")]).to_csv(study_dir / "summary.csv", index=False)
    loss = pd.read_csv(source / "loss_curves.csv")
    loss.iloc[:0].to_csv(study_dir / "loss_curves.csv", index=False)  # as aggregated from classical methods only
    out = tmp_path / "report" / "index.html"
    figures = build_report(study_dir, config, out)
    html = out.read_text(encoding="utf-8")
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in html
    assert "no label maps" in html and "No ANOVA results" in html and "logged a loss history" in html
    assert {p.name for p in figures} == {"runtime.png", "example_first.png"}


def test_axial_axis_follows_the_affine() -> None:
    assert axial_axis(np.eye(4)) == 2
    asl = np.array([[0, 0, -1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=float)  # ASL orientation
    assert axial_axis(asl) == 1


def _write_pair(root: Path, fixed: Path, moving: Path, warped: Path, disp_vox: np.ndarray) -> tuple[Path, Path]:
    """A registration folder (warped image as a symlink, displacement, log.json) -> (reg_dir, log)."""
    reg_dir = root / "reg"
    reg_dir.mkdir()
    (reg_dir / "warped.nii.gz").symlink_to(warped)
    save_displacement(disp_vox, load_image(fixed), reg_dir / "displacement.nii.gz")
    log = reg_dir / "log.json"
    log.write_text(json.dumps({"inputs": {"fixed": str(fixed), "moving": str(moving)}}))
    return reg_dir, log


def test_example_of_a_3d_pair_uses_the_middle_axial_slice(tmp_path: Path) -> None:
    shape = (10, 12, 8)
    affine = np.array([[2.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.5, 0, 0], [0, 0, 0, 1]])  # array axis 1 -> S
    rng = np.random.default_rng(0)
    data = rng.random(shape).astype(np.float32)
    fixed = tmp_path / "fixed.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(fixed))
    disp_vox = np.zeros((3, *shape), dtype=np.float32)
    disp_vox[0] = 0.1 * np.arange(shape[0])[:, None, None]  # stretch along axis 0: det J = 1.1 inside
    reg_dir, log = _write_pair(tmp_path, fixed, fixed, fixed, disp_vox)
    example = load_example(reg_dir, log)
    assert example.plane == "axial slice 6 of array axis 1"
    np.testing.assert_array_equal(example.fixed, data[:, 6, :])
    assert example.disp_vox.shape == (2, 10, 8) and example.spacing_mm == (2.0, 1.0)
    np.testing.assert_allclose(example.disp_vox[0], disp_vox[0][:, 6, :], atol=1e-5)
    np.testing.assert_allclose(example.jac_det, 1.1, atol=1e-4)
    figure = example_figure(example, "3D pair", ["atlas (fixed): a"])
    assert len(figure.axes) == 10 and figure.axes[8].get_images()[0].norm.vcenter == 1.0


def test_example_rejects_images_on_another_grid(tmp_path: Path) -> None:
    fixed = write_nifti(blob((12, 10)), tmp_path / "fixed.nii.gz")
    moving = tmp_path / "moving.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10), dtype=np.float32) * np.arange(10), np.eye(4)), str(moving))
    reg_dir, log = _write_pair(tmp_path, fixed, moving, fixed, np.zeros((2, *SHAPE), dtype=np.float32))
    with pytest.raises(InputError, match="moving image has shape"):
        load_example(reg_dir, log)


def test_missing_study_table_names_it(study: tuple[Path, Path], tmp_path: Path) -> None:
    _, config = study
    with pytest.raises(InputError, match="jobs.tsv"):
        build_report(tmp_path, config, tmp_path / "report" / "index.html")
    assert not (tmp_path / "report" / "index.html").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_example_of_real_brains(shared_data: Path, tmp_path: Path) -> None:
    """Two real, affinely aligned T1w brains (160x192x224, 1 mm): a readable 3D example figure."""
    fixed = shared_data / "aligned-brains" / "subject-a" / "t1w.nii.gz"
    moving = shared_data / "aligned-brains" / "subject-b" / "t1w.nii.gz"
    reference = load_image(fixed)
    ii = np.arange(reference.shape[0], dtype=np.float32)[:, None, None]
    disp_vox = np.zeros((3, *reference.shape), dtype=np.float32)
    disp_vox[0] = 3.0 * np.sin(np.pi * ii / (reference.shape[0] - 1))  # 3-voxel bulge along axis 0
    reg_dir, log = _write_pair(tmp_path, fixed, moving, moving, disp_vox)
    example = load_example(reg_dir, log)
    normal = axial_axis(reference.affine)
    assert example.fixed.shape == tuple(n for a, n in enumerate(reference.shape) if a != normal)
    slope = 3.0 * np.pi / (reference.shape[0] - 1)  # det J = 1 + du0/di, central differences inside
    assert example.jac_det.min() == pytest.approx(1 - slope, abs=2e-3)
    assert example.jac_det.max() == pytest.approx(1 + slope, abs=2e-3)
    out = tmp_path / "example.png"
    out.write_bytes(png_bytes(example_figure(example, "real brains", ["atlas (fixed): subject-a"])))
    assert _png_size(out)[0] > 1000


def test_report_with_training_qc_and_landmarks(study: tuple[Path, Path], tmp_path: Path) -> None:
    """Learned-method training logs, QC pictures and TRE columns add their sections."""
    from matplotlib.figure import Figure
    from test_training import METHOD as GLOBAL_SHIFT
    from test_training import _write as write_blobs

    from registration_core.methods.training import train_method

    source, config = study
    study_dir = tmp_path / "tiny"
    study_dir.mkdir()
    for name in ("jobs.tsv", "summary.csv", "dice_per_label.csv", "loss_curves.csv"):
        (study_dir / name).write_bytes((source / name).read_bytes())
    metrics = pd.read_csv(source / "metrics.csv")
    metrics.assign(tre_before_mm=4.0, tre_mean_mm=np.linspace(1.0, 2.0, len(metrics))).to_csv(
        study_dir / "metrics.csv", index=False
    )
    images = write_blobs(tmp_path, [(12, 10), (13, 9), (11, 11)], "train")
    train_method(GLOBAL_SHIFT, images, study_dir / "train" / "demons" / "default", {"steps": 30, "val_every": 10})
    (study_dir / "qc").mkdir()
    picture = Figure(figsize=(3, 2))
    picture.subplots().plot([0, 1], [1, 0])
    (study_dir / "qc" / "A1.png").write_bytes(png_bytes(picture))

    out = tmp_path / "report" / "index.html"
    figures = build_report(study_dir, config, out)
    html = out.read_text(encoding="utf-8")
    for section in ("training", "qc", "before_after"):
        assert f'<section id="{section}">' in html and f'href="#{section}"' in html
    assert {"training_curves.png", "qc_A1.png", "before_after_tre_mean_mm.png"} <= {p.name for p in figures}
    assert "Learned and per-pair methods on the same test pairs" in html
    assert "training time (s)" in html and "registration time per pair (s)" in html
    # every learned result carries its budget and is not passed off as a reproduction of the paper
    assert "30 steps · 3 images" in html and "<th>reproduction</th>" in html.replace(' style="text-align: right;"', "")


def test_sections_that_do_not_apply_are_left_out(report: tuple[str, list[Path], Path]) -> None:
    html = report[0]
    for section in ("training", "qc", "before_after"):
        assert f'id="{section}"' not in html and f'href="#{section}"' not in html


def test_learned_grid_points_find_the_model_they_used() -> None:
    from registration_core.report.training import model_id

    assert model_id("io_steps~50") == "default"
    assert model_id("similarity~ncc__io_steps~0__io_lr~0.001") == "similarity~ncc"
    assert model_id("default") == "default"
    assert model_id("lr~0.01__kernel~AK") == "lr~0.01__kernel~AK"


def test_checkerboard_interleaves_the_images() -> None:
    from registration_core.report.examples import checkerboard

    first, second = np.zeros((16, 8)), np.ones((16, 8))
    board = checkerboard(first, second, tiles=4)  # squares of 4 px
    assert board[0, 0] == 0 and board[0, 4] == 1 and board[4, 0] == 1 and board[4, 4] == 0
    assert board[:4, :4].max() == 0 and board[:4, 4:].min() == 1
    assert board.mean() == 0.5


def test_only_a_full_published_run_is_a_reproduction() -> None:
    from registration_core.methods import get_method
    from registration_core.report.training import is_reproduction, training_budget

    full = {"params": get_method("voxelmorph").resolve_params({"preset": "published"}), "steps": 150_000}
    assert is_reproduction("voxelmorph", full)
    assert not is_reproduction("voxelmorph", {**full, "params": {**full["params"], "lr": 2e-3}})  # an override
    assert not is_reproduction("voxelmorph", {**full, "steps": 2000})
    assert not is_reproduction("voxelmorph", {"params": {**full["params"], "preset": "default"}, "steps": 150_000})
    for method in ("nephi", "linear_deformable", "nodeo"):  # no published step count: never a reproduction
        assert not is_reproduction(method, {**full, "steps": 10**7})
    assert training_budget({"steps": 300, "n_train": 14, "train_time_s": 83.3}) == "300 steps · 14 images · 83 s"
