"""`objects` on a `slideseg synth` slide counts what the truth holds: where the mask is right (the
truth's own classes) exactly the truth's objects, and on the bundled model's mask the truth's
nuclei within the tolerance measured on larger slides (benchmarks/bench_objects_count.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_boxes
from slideseg.predict import PredictConfig, predict
from slideseg.predict.config import default_model
from slideseg.tools.objects import ObjectsConfig, objects
from slideseg.tools.synth import SynthConfig, SynthResult, write_synthetic_slide
from slideseg.write.mask import create_mask
from tests.test_tools_components import reference

SIZE, CHUNK = 512, 128
MIN_AREA = 5.0
"""µm²: 20 px at 0.5 µm/px, a quarter of the smallest nucleus synth draws; drops the specks of a
few pixels that a mask leaves at nucleus borders."""
NUCLEI_RANGE = (-0.11, -0.015)
"""Objects (``--min-area 5``) / nuclei - 1 on the bundled model's mask, as measured with
benchmarks/bench_objects_count.py: pooled over 3 seeds of 4096² (53,009 nuclei) -6.8 %, each seed
within -6.9 % .. -6.6 %; on 512² (~280 nuclei) seeds 0-9 spread over -8.0 % .. -4.3 % (seed 0, this
slide: -6.9 %). The shortfall is the mask's: touching nuclei it does not separate (objects that
cover two or more nuclei). The range is that 512² spread with 3 % to spare each way."""


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return write_synthetic_slide(tmp_path_factory.mktemp("synth") / "s.ome.tif", SynthConfig(size=(SIZE, SIZE)))


def truth(result: SynthResult, name: str) -> np.ndarray:
    return np.asarray(zarr.open_group(result.truth_path, mode="r")[name][:])  # type: ignore[index]


def nuclei(result: SynthResult) -> int:
    ids = truth(result, "instances")
    return len(np.unique(ids[ids > 0]))


def test_where_the_mask_is_right_the_objects_are_the_truth_objects(slide: SynthResult, tmp_path: Path) -> None:
    """The truth's classes as the mask: the objects are exactly the truth's objects, and touching
    nuclei make fewer of them than there are nuclei (so counts are compared like with like)."""
    classes = truth(slide, "classes")
    classes_names = [LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (230, 25, 75, 255))]
    writer = create_mask(tmp_path / "truth.zarr", classes.shape, CHUNK, classes_names, 0.5,
                         {"source": {"path": "", "level": 0}})
    for y0, y1, x0, x1 in grid_boxes(classes.shape, CHUNK):
        writer.write_chunk(y0 // CHUNK, x0 // CHUNK, classes[y0:y1, x0:x1])
    writer.finalize()
    result = objects(tmp_path / "truth.zarr", ObjectsConfig())
    components = ndimage.label(classes == 1)[1]
    assert result.objects == components < nuclei(slide)
    instances = np.asarray(zarr.open_group(tmp_path / "truth.zarr", mode="r")["objects/0"][:])  # type: ignore[index]
    np.testing.assert_array_equal(instances, reference(classes, (1,), 4))


def test_the_bundled_model_counts_the_nuclei_within_the_measured_tolerance(slide: SynthResult, tmp_path: Path) -> None:
    predict(slide.image_path, tmp_path / "m.zarr", default_model(), PredictConfig(device="cpu"))
    counted = objects(tmp_path / "m.zarr", ObjectsConfig(min_area=MIN_AREA)).objects
    low, high = NUCLEI_RANGE
    assert low <= counted / nuclei(slide) - 1 <= high, (counted, nuclei(slide))
