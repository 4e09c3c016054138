"""The U-Net paper's loss core: separation borders, the weight map and the weighted cross-entropy.

Ronneberger et al. (2015), eq. 1 and 2: the energy is a pixel-wise softmax cross-entropy, each
pixel weighted by

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

where ``w_c`` balances the class frequencies and ``d1``, ``d2`` are the distances to the nearest
and the second-nearest object. The border term is large only in narrow gaps between two objects,
which forces the network to learn the thin separation borders between touching objects.

Conventions (the paper leaves them open):

- Distances are Euclidean, from a pixel centre to the nearest pixel centre of an object
  (:func:`scipy.ndimage.distance_transform_edt` of the object's complement).
- The border term applies to background pixels, where the separation borders are (the paper's
  Fig. 3d); object pixels get ``w_c`` alone (``border_on_objects`` weighs them too: measured in
  docs/training.md, not the default).
- With fewer than two objects in reach, ``d2`` is infinite and the border term is 0.
- The loss is ``sum(w * ce) / count(w > 0)``: a mean over the labelled pixels (weight 0 marks
  pixels without a label, e.g. beyond the image border), so a weight map of ones gives the plain
  mean cross-entropy.

>>> labels = np.zeros((1, 11), np.int32); labels[0, :3] = 1; labels[0, 8:] = 2
>>> w = unet_weight_map(labels, w0=10.0, sigma=5.0, class_weights=(1.0, 1.0))
>>> round(float(w[0, 5]), 4)  # the gap's centre: d1 = d2 = 3 px, 1 + 10 exp(-36 / 50)
5.8675
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slideseg.errors import ConfigError
from slideseg.io.images import MaskKind

if TYPE_CHECKING:
    import torch

BORDER_TOLERANCE = 1e-6
"""Objects farther than the distance where ``w0 * exp(-d**2 / (2 sigma**2))`` falls below
``w0 * BORDER_TOLERANCE`` are not measured: the weight map is exact to this relative error."""

F32 = NDArray[np.float32]

SEPARATION_WIDTHS = (1, 2)
"""Widths of the gap, px, that :func:`separation_borders` can draw between touching objects."""


def border_cutoff(sigma: float, tolerance: float = BORDER_TOLERANCE) -> float:
    """Distance beyond which the border term is below ``tolerance`` times ``w0``.

    >>> round(border_cutoff(5.0), 2)
    26.28
    """
    return sigma * math.sqrt(2.0 * math.log(1.0 / tolerance))


def balanced_class_weights(counts: Sequence[int] | NDArray[np.int64]) -> tuple[float, ...]:
    """Class weights that make every present class carry the same total weight.

    ``w_k = N / (K * n_k)`` for the ``K`` classes with ``n_k > 0`` pixels out of ``N``; absent
    classes get 1. Equal frequencies give all ones.

    >>> balanced_class_weights([75, 25])
    (0.6666666666666666, 2.0)
    >>> balanced_class_weights([10, 0, 10])
    (1.0, 1.0, 1.0)
    """
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    if not present.any():
        return tuple(1.0 for _ in n)
    w = np.ones_like(n)
    w[present] = n.sum() / (present.sum() * n[present])
    return tuple(float(v) for v in w)


def object_distances(labels: NDArray[np.integer], cutoff: float = math.inf) -> tuple[F32, F32]:
    """Distances from every pixel to the nearest (``d1``) and second-nearest (``d2``) object.

    Each object's distance transform is computed only in its bounding box grown by ``cutoff``
    pixels, so memory stays at two float32 maps plus one box. Distances beyond ``cutoff`` come
    back as ``inf``; those within it are exact.

    Parameters
    ----------
    labels : (H, W) integer instance labels, 0 = background; any ids (need not be consecutive).
    cutoff : distance in px beyond which objects are not measured.

    Returns
    -------
    d1, d2 : (H, W) float32; 0 inside an object for ``d1``; ``inf`` where fewer objects reach.
    """
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape).astype(np.int32)
    if ids[0] != 0:  # no background: ids start at 1 in ``compact`` after this shift
        compact += 1
    margin = math.ceil(cutoff) if math.isfinite(cutoff) else max(labels.shape)
    h, w = labels.shape
    for k, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, h))
        xs = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, w))
        d = ndimage.distance_transform_edt(compact[ys, xs] != k).astype(np.float32)  # (h', w')
        if math.isfinite(cutoff):
            d[d > cutoff] = np.inf
        near, second = d1[ys, xs], d2[ys, xs]  # views: updated in place
        np.minimum(second, np.maximum(near, d), out=second)
        np.minimum(near, d, out=near)
    return d1, d2


def unet_weight_map(labels: NDArray[np.integer], w0: float = 10.0, sigma: float = 5.0,
                    class_weights: Sequence[float] | None = None, *,
                    classes: NDArray[np.integer] | None = None, border_on_objects: bool = False) -> F32:
    """The U-Net paper's weight map ``w_c(x) + w0 exp(-(d1 + d2)**2 / (2 sigma**2))``.

    Parameters
    ----------
    labels : (H, W) integer instance labels, 0 = background.
    w0 : weight of the border term (0 turns it off).
    sigma : width of the border term, px.
    class_weights : ``w_c`` per class id; None balances the class frequencies of this image
        (:func:`balanced_class_weights`).
    classes : (H, W) class ids for ``w_c``; default ``labels > 0`` (two classes).
    border_on_objects : also weight object pixels by the border term (``d1`` is 0 there, ``d2`` the
        distance to the nearest other object), so both sides of a narrow gap weigh the same;
        default: background pixels only, as in the paper.

    Returns
    -------
    (H, W) float32 weights; the border term on background (label 0) pixels, and on object pixels
    with ``border_on_objects``.

    Raises
    ------
    ConfigError
        ``w0`` or ``sigma`` out of range, or ``class_weights`` too short for the class ids.
    """
    if w0 < 0 or not sigma > 0:
        raise ConfigError(f"the weight map needs w0 >= 0 and sigma > 0, got w0={w0}, sigma={sigma}")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ConfigError(f"expected (H, W) instance labels, got shape {labels.shape}")
    cls = (labels > 0).astype(np.intp) if classes is None else np.asarray(classes).astype(np.intp)
    n_classes = int(cls.max()) + 1 if cls.size else 1
    if class_weights is None:
        class_weights = balanced_class_weights(np.bincount(cls.ravel(), minlength=n_classes))
    if len(class_weights) < n_classes:
        raise ConfigError(f"class_weights has {len(class_weights)} values but the labels hold class "
                          f"ids up to {n_classes - 1}; give one weight per class.")
    weight = np.asarray(class_weights, np.float32)[cls]  # (H, W)
    if w0 > 0 and labels.size:
        d1, d2 = object_distances(labels, border_cutoff(sigma))
        s = d1 + d2
        border = np.float32(w0) * np.exp(-(s * s) / np.float32(2.0 * sigma * sigma))
        weight += border if border_on_objects else np.where(labels == 0, border, np.float32(0))
    return weight


def separation_borders(labels: NDArray[np.integer], width: int = 2) -> NDArray[np.bool_]:
    """Object pixels at a 4-contact with another object: set them to background in the target.

    ``width`` 2 marks both sides of every contact (a 2-px gap); ``width`` 1 marks only the side of
    the larger object id (a 1-px gap: a function of the labels alone, so it turns with the image
    under flips and rotations). Either way no two pixels of different objects stay 4-adjacent, so
    the objects are no longer 4-connected and the network learns to draw the gap.

    >>> lab = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> separation_borders(lab).astype(int)
    array([[0, 1, 1, 0],
           [0, 1, 1, 0]])
    >>> separation_borders(lab, width=1).astype(int)
    array([[0, 0, 1, 0],
           [0, 0, 1, 0]])
    """
    if width not in SEPARATION_WIDTHS:
        raise ConfigError(f"the separation border width must be 1 or 2 px, got {width!r}")
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        later = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        earlier = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        a, b = labels[later], labels[earlier]
        touch = (a != b) & (a > 0) & (b > 0)
        out[later] |= touch if width == 2 else touch & (a > b)
        out[earlier] |= touch if width == 2 else touch & (b > a)
    return out


# ---------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetSpec:
    """How a mask becomes a training target and a weight map."""

    kind: MaskKind
    """'instances' (object ids; two classes) or 'classes' (class ids)."""
    classes: int
    """Classes of the model, background included."""
    weighted: bool = True
    """The paper's weight map; False: weights 1 (plain cross-entropy)."""
    w0: float = 10.0
    """Weight of the border term."""
    sigma: float = 5.0
    """Width of the border term, px."""
    class_weights: tuple[float, ...] | None = None
    """``w_c`` per class; None balances each mask's own frequencies."""
    separation: bool = True
    """Instance masks: background where two objects touch (separation borders)."""
    separation_width: int = 2
    """Width of those borders, px: 2 (both sides of a contact) or 1 (one side)."""
    border_on_objects: bool = False
    """The border term on object pixels too (:func:`unet_weight_map`); default background only."""


def make_target(labels: NDArray[np.int64], spec: TargetSpec
                ) -> tuple[NDArray[np.uint8], NDArray[np.float32], NDArray[np.uint8]]:
    """Target class ids, loss weights and the true classes (without separation borders) of a mask.

    ``labels`` are checked instance or class ids (:func:`slideseg.train.data.check_mask_values`).
    Instance masks give two classes (background, object); with ``separation`` the pixels where two
    objects touch become background in the target (:func:`separation_borders`).
    Class masks give their ids; the weight map then sees each class's connected components as
    objects.
    """
    if spec.kind == "instances":
        truth = (labels > 0).astype(np.uint8)
        if spec.separation:
            labels = np.where(separation_borders(labels, spec.separation_width), 0, labels)
        target = (labels > 0).astype(np.uint8)
    else:
        truth = target = labels.astype(np.uint8)
        labels = _components(target) if spec.weighted else labels
    if not spec.weighted:
        return target, np.ones(target.shape, np.float32), truth
    weight = unet_weight_map(labels, spec.w0, spec.sigma, spec.class_weights, classes=target,
                             border_on_objects=spec.border_on_objects)
    return target, weight, truth


def _components(classes: NDArray[np.uint8]) -> NDArray[np.int64]:
    """Connected components (4-connected) of each non-zero class, with ids unique across classes."""
    out = np.zeros(classes.shape, np.int64)
    offset = 0
    for k in np.unique(classes):
        if k == 0:
            continue
        lab, n = ndimage.label(classes == k)
        out[lab > 0] = lab[lab > 0] + offset
        offset += n
    return out


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by ``weight``, averaged over labelled pixels.

    Parameters
    ----------
    logits : (N, K, H, W) float, any precision (computed in float32).
    target : (N, H, W) int64 class ids.
    weight : (N, H, W) float32; 0 marks pixels without a label.

    Returns
    -------
    Scalar ``sum(weight * ce) / max(1, count(weight > 0))``.
    """
    import torch.nn.functional as F

    ce = F.cross_entropy(logits.float(), target, reduction="none")  # (N, H, W)
    labelled = (weight > 0).sum().clamp_min(1)
    return (ce * weight).sum() / labelled
