"""How many objects `slideseg objects` finds on a synthetic slide, against the synth truth.

For each seed: `slideseg synth` writes an N x N slide and its truth; `predict` segments it with the
bundled model (CPU); `objects` labels the mask (its defaults: every class but the background,
4-connected). The truth is counted two ways:

* nuclei: the distinct ids of the truth's ``instances`` (every nucleus drawn);
* truth objects: the 4-connected components of the truth's ``classes``, i.e. the objects
  `objects` finds when the mask is exactly right. Nuclei that touch form one component (they touch
  by chance at the default density), so this is the count to compare with like with like; and
  `objects` run on the truth's ``classes`` written as a mask must find exactly that many.

The model's mask is counted as `objects` makes it (its defaults) and with ``--min-area 5`` (µm²:
20 px at 0.5 µm/px, a quarter of the smallest nucleus drawn), which drops the specks of a few pixels
a mask leaves at nucleus borders. Where it differs from the nuclei, the line says why: specks
(objects under 20 px) and merges (objects that cover more than one nucleus).

It prints one JSON line per slide (counts, relative differences, the nucleus IoU of the mask and
`evaluate`'s object scores) and a summary line over the seeds.

    .venv/bin/python benchmarks/bench_objects_count.py [--size 4096] [--seeds 0 1 2] [--touching 0.0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import zarr

from slideseg.io.ngff import LabelClass
from slideseg.plan.tiles import grid_boxes
from slideseg.predict import PredictConfig, predict
from slideseg.predict.config import default_model
from slideseg.tools.components import LabelSpec, label_blocks
from slideseg.tools.evaluate import evaluate
from slideseg.tools.objects import ObjectsConfig, objects
from slideseg.tools.synth import SynthConfig, write_synthetic_slide
from slideseg.write.mask import create_mask

BLOCK = 2048  # truth blocks read at once
MIN_AREA_UM2 = 5.0
CLASSES = [LabelClass(0, "background", (0, 0, 0, 0)), LabelClass(1, "nucleus", (230, 25, 75, 255))]


def truth_counts(truth: Path) -> dict[str, int]:
    """Distinct nuclei of the truth's ``instances``, and 4-connected components of its ``classes``."""
    group = zarr.open_group(truth, mode="r")
    instances, classes = group["instances"], group["classes"]
    h, w = (int(v) for v in classes.shape)  # type: ignore[union-attr]
    ids = np.zeros(0, np.uint32)
    for y0 in range(0, h, BLOCK):
        for x0 in range(0, w, BLOCK):
            block = np.asarray(instances[y0:y0 + BLOCK, x0:x0 + BLOCK])  # type: ignore[index]
            ids = np.union1d(ids, block[block > 0])
    components = 0
    for _, labels in label_blocks(lambda y0, y1, x0, x1: np.asarray(classes[y0:y1, x0:x1]),  # type: ignore[index]
                                  (h, w), BLOCK, LabelSpec((1,))):
        components = max(components, int(labels.max(initial=0)))
    return {"nuclei": len(ids), "truth_objects": components}


def truth_as_mask(truth: Path, path: Path, mpp: float) -> Path:
    """The truth's ``classes`` written as a slideseg mask: the mask that is right everywhere."""
    classes = zarr.open_group(truth, mode="r")["classes"]
    shape = (int(classes.shape[0]), int(classes.shape[1]))  # type: ignore[union-attr]
    writer = create_mask(path, shape, 1024, CLASSES, mpp, {"source": {"path": "", "level": 0}}, overwrite=True)
    for y0, y1, x0, x1 in grid_boxes(shape, 1024):
        writer.write_chunk(y0 // 1024, x0 // 1024, np.asarray(classes[y0:y1, x0:x1]))  # type: ignore[index]
    writer.finalize()
    return path


def why(mask: Path, truth: Path, table: Path) -> dict[str, int]:
    """Specks (objects under 20 px) and merges (objects covering more than one nucleus)."""
    ids, nuclei = zarr.open_group(mask, mode="r")["objects/0"], zarr.open_group(truth, mode="r")["instances"]
    h, w = (int(v) for v in nuclei.shape)  # type: ignore[union-attr]
    pairs = np.zeros(0, np.uint64)  # (object << 32 | nucleus) that share a pixel
    for y0 in range(0, h, BLOCK):
        for x0 in range(0, w, BLOCK):
            i = np.asarray(ids[y0:y0 + BLOCK, x0:x0 + BLOCK]).astype(np.uint64)  # type: ignore[index]
            n = np.asarray(nuclei[y0:y0 + BLOCK, x0:x0 + BLOCK]).astype(np.uint64)  # type: ignore[index]
            both = (i > 0) & (n > 0)
            pairs = np.union1d(pairs, (i[both] << np.uint64(32)) | n[both])
    per_object = np.bincount((pairs >> np.uint64(32)).astype(np.int64))
    pixels = pq.read_table(table, columns=["pixels"]).column("pixels").to_numpy()
    return {"specks_under_20px": int((pixels < 20).sum()), "objects_over_2plus_nuclei": int((per_object > 1).sum())}


def nucleus_iou(mask: Path, truth: Path) -> float:
    """IoU of the nucleus class (1) between the mask's level 0 and the truth's classes."""
    pred, true = zarr.open_group(mask, mode="r")["0"], zarr.open_group(truth, mode="r")["classes"]
    h, w = (int(v) for v in true.shape)  # type: ignore[union-attr]
    inter = union = 0
    for y0 in range(0, h, BLOCK):
        for x0 in range(0, w, BLOCK):
            p = np.asarray(pred[y0:y0 + BLOCK, x0:x0 + BLOCK]) == 1  # type: ignore[index]
            t = np.asarray(true[y0:y0 + BLOCK, x0:x0 + BLOCK]) == 1  # type: ignore[index]
            inter, union = inter + int((p & t).sum()), union + int((p | t).sum())
    return inter / max(union, 1)


def measure(work: Path, size: int, seed: int, touching: float) -> dict[str, Any]:
    """Synth, predict, objects and the counts for one slide."""
    slide = work / f"s{size}-{seed}.ome.tif"
    synth = write_synthetic_slide(slide, SynthConfig(size=(size, size), seed=seed, touching=touching), overwrite=True)
    mask = work / f"s{size}-{seed}.zarr"
    t0 = time.perf_counter()
    predict(slide, mask, default_model(), replace(PredictConfig(device="cpu"), overwrite=True))
    t1 = time.perf_counter()
    found = objects(mask, ObjectsConfig(overwrite=True))
    t2 = time.perf_counter()
    causes = why(mask, synth.truth_path, found.table)
    kept = objects(mask, ObjectsConfig(overwrite=True, min_area=MIN_AREA_UM2)).objects
    truth = truth_counts(synth.truth_path)
    right = objects(truth_as_mask(synth.truth_path, work / f"s{size}-{seed}.truth-mask.zarr", synth_mpp(synth)),
                    ObjectsConfig(overwrite=True)).objects
    scores = evaluate(mask, synth.truth_path)
    return {
        "size": size, "seed": seed, "touching": touching, **truth, "objects_of_truth_mask": right,
        "objects": found.objects, f"objects_min_area_{MIN_AREA_UM2:g}um2": kept, **causes,
        "rel_diff_truth_objects": found.objects / truth["truth_objects"] - 1,
        "rel_diff_nuclei": found.objects / truth["nuclei"] - 1,
        "rel_diff_nuclei_min_area": kept / truth["nuclei"] - 1,
        "nucleus_iou": nucleus_iou(mask, synth.truth_path),
        "evaluate": {"f1": scores.objects["f1"], "pq": scores.instances["pq"], "aji": scores.instances["aji"],
                     "merge_rate": scores.merges["merge_rate"]},
        "predict_s": round(t1 - t0, 2), "objects_s": round(t2 - t1, 2),
    }


def synth_mpp(synth: Any) -> float:
    return float(zarr.open_group(synth.truth_path, mode="r").attrs["mpp"])  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="slide edge, px (default: 4096)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="synth seeds (default: 0 1 2)")
    ap.add_argument("--touching", type=float, default=0.0, help="synth --touching (default: 0)")
    ap.add_argument("--workdir", type=Path, default=Path("benchmarks/out/objects_count"))
    ap.add_argument("--keep", action="store_true", help="keep the slides, masks and tables")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        rows.append(measure(args.workdir, args.size, seed, args.touching))
        print(json.dumps(rows[-1]), flush=True)
    diffs = np.array([r["rel_diff_truth_objects"] for r in rows])
    keys = ("nuclei", "truth_objects", "objects_of_truth_mask", "objects", f"objects_min_area_{MIN_AREA_UM2:g}um2",
            "specks_under_20px", "objects_over_2plus_nuclei")
    total = {k: sum(r[k] for r in rows) for k in keys}
    print(json.dumps({"summary": True, "size": args.size, "seeds": args.seeds, **total,
                      "rel_diff_truth_mask": total["objects_of_truth_mask"] / total["truth_objects"] - 1,
                      "rel_diff_truth_objects_pooled": total["objects"] / total["truth_objects"] - 1,
                      "rel_diff_nuclei_pooled": total["objects"] / total["nuclei"] - 1,
                      "rel_diff_nuclei_min_area_pooled": total[keys[4]] / total["nuclei"] - 1,
                      "rel_diff_nuclei_min_area_range": [min(r["rel_diff_nuclei_min_area"] for r in rows),
                                                         max(r["rel_diff_nuclei_min_area"] for r in rows)],
                      "rel_diff_truth_objects_max_abs": float(np.abs(diffs).max())}))
    if not args.keep:
        shutil.rmtree(args.workdir)


if __name__ == "__main__":
    main()
