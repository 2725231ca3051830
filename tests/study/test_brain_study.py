"""config/studies/brain-3d-benchmark.yaml as planned on the real OASIS-TRT headers: the paper's
windows in mm on the 2 mm grid, every method of the headline table, learned methods trained off
the test subjects."""

from __future__ import annotations

from pathlib import Path

import pytest

from registration_core.methods import get_method
from registration_core.methods.nodeo import level_windows
from registration_core.study.checks import PlanGrids
from registration_core.study.config import load_config
from registration_core.study.plan import Study

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "config" / "studies" / "brain-3d-benchmark.yaml"


@pytest.mark.realdata
def test_nodeo_keeps_the_papers_windows_in_mm_on_the_2mm_grid(shared_data: Path) -> None:
    study = Study(load_config(CONFIG), REPO_ROOT)
    grid = PlanGrids(study).prepared("sub-01")
    assert grid is not None and grid.shape == (80, 96, 72)
    assert grid.spacing == pytest.approx((2.0, 2.0, 2.0))
    points = {point.grid_id: point.resolved for point in study.grid["nodeo"]}
    assert set(points) == {"preset~reference", "preset~default"}
    for params in points.values():
        # 21 mm and 15 mm, as the paper's 21 and 15 voxels of 1 mm
        assert level_windows(params, 1, grid.spacing) == {"ncc_window": (11,) * 3, "smoothing_window": (7,) * 3}
        get_method("nodeo").check_shape(grid.shape, params, grid.spacing)


@pytest.mark.realdata
def test_every_method_of_the_table_runs_and_the_learned_ones_train_off_the_test_pairs(shared_data: Path) -> None:
    study = Study(load_config(CONFIG), REPO_ROOT)
    assert set(study.grid) == {"nodeo", "demons", "bspline", "syn", "elastix", "voxelmorph", "linear_deformable", "nephi"}
    tested = {subject for pair in study.pairs for subject in pair}
    assert len(study.pairs) == 8 and {atlas for atlas, _ in study.pairs} == {"sub-01", "sub-02"}
    for method in ("voxelmorph", "linear_deformable"):
        training = study.training[method]
        assert training is not None
        assert set(training.subjects) == {"sub-06", "sub-07", "sub-08", "sub-09", "sub-10"}
        assert not set(training.subjects) & tested
