"""The score map as OME-Zarr (NGFF 0.5 on zarr v3), inside the scan's own store, placed on the slide.

Layout of `OUT.zarr` once a scan is finished (`fc2conv.scan.stitch` holds the rest):

- the group itself is an NGFF image of the raw scores: `ome.multiscales` with one dataset, `scores` (classes ×
  H' × W', float32 or float16, exactly as computed), axes c, y, x;
- `probabilities/` is an NGFF image of the class probabilities, a pyramid: dataset `0` is the softmax over all
  classes of each cell as uint8 (value / 255 is the probability, within 1/510), dataset m + 1 the maximum over
  2 × 2 pixels of dataset m, down to 256 cells a side or fewer. `omero` names each channel by its label, with a
  colour and the window 0–255; its attribute `fc2conv.complete` is set last;
- each dataset's `coordinateTransformations` (a scale, then a translation) put its pixel centres on the centres of
  the windows they stand for, in the slide's physical coordinates: `fc2conv.scan.placement` derives them;
- in a masked scan, `labels/mask` is an NGFF label image of the scores image (1: the cell is in the mask and
  computed; 0: missing, NaN in `scores` and 0 in `probabilities`).

uint8, not float32: a quarter of the size, and what every viewer shows without contrast settings (QuPath's
alignment overlay refuses float32); 1/255 is finer than any colour map shows, and the exact numbers stay in
`scores`. The maximum, not the mean, makes the pyramid: it commutes with rounding (each level is exactly
round(255 · the largest probability in its block)) and a digit a few cells wide stays visible when zoomed out.

Everything is computed after the scan, one chunk of `scores` (a tile's cells) at a time.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .placement import Placement

__all__ = ["PROBABILITIES", "SMALLEST", "finished", "level_shapes", "multiscale", "write"]

PROBABILITIES = "probabilities"
MASK_LABEL = "labels/mask"
SMALLEST = 256  # the pyramid stops at a level this many cells a side, or fewer
# Classes per chunk of the pyramid: as many as fill about 1 MiB of a chunk's cells. One class per chunk made a
# 1000-class map 1000 files per tile, and zarr's cost per chunk (not the pixels) took 29 s of a 12288² ResNet18 scan;
# 1 MiB chunks write it in under 1 s and still read one class of a 384² level in about 15 ms.
CHUNK_BYTES = 1 << 20
AXES = ("c", "y", "x")
VERSION = "0.5"


def finished(group: Any) -> bool:
    """Whether the store `group` (an open zarr group) holds a complete OME-Zarr map."""
    try:
        return bool(group[PROBABILITIES].attrs.asdict()["fc2conv"]["complete"]) and "ome" in group.attrs
    except (KeyError, TypeError):
        return False


def write(store: Path, attrs: dict[str, Any], placement: Placement) -> None:
    """Add the OME-Zarr metadata and the probability pyramid to the finished scan at `store` (nothing to do when
    they are there already)."""
    import zarr

    _name_axes(store / "scores")
    group = zarr.open_group(str(store), mode="r+")
    if finished(group):
        return
    labels = attrs["labels"]
    shapes = _pyramid(group, group["scores"], len(labels))
    pyramid = group[PROBABILITIES]
    from .outputs import class_colors

    colors = class_colors(labels)
    omero = {"channels": [{"label": label, "color": "".join(f"{v:02X}" for v in color),
                           "active": label.lower() != "background",
                           "coefficient": 1, "family": "linear", "inverted": False,
                           "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
                          for label, color in zip(labels, colors, strict=True)],
             "rdefs": {"model": "color"}}
    pyramid.attrs.update({"ome": {"version": VERSION, "omero": omero, "multiscales": [multiscale(
        placement, len(shapes), name="probabilities", kind="max",
        metadata={"description": "softmax over the classes of each cell, as round(255 · p); each level the "
                                 "maximum over 2×2 pixels of the one before", "scale_factor": 2})]},
        "fc2conv": {"complete": True, "encoding": "probability = value / 255", "levels": [list(s) for s in shapes]}})
    if MASK_LABEL in group:
        _label_mask(group, placement)
    group.attrs["ome"] = {"version": VERSION, "multiscales": [multiscale(
        placement, 1, name="scores", paths=["scores"],
        metadata={"description": "raw class scores (logits), exactly as the model computed them; NaN where a "
                                 "cell is missing (outside the scan's mask)"})]}


def _label_mask(group: Any, placement: Placement) -> None:
    """Make a masked scan's cells' mask (`labels/mask/0`, 1 inside) an NGFF label image of the scores image: the
    same grid and placement, value 1 drawn translucent green, 0 (missing cells) transparent."""
    labels = group["labels"]
    labels.attrs["ome"] = {"version": VERSION, "labels": ["mask"]}
    labels["mask"].attrs["ome"] = {
        "version": VERSION, "multiscales": [multiscale(placement, 1, name="mask", paths=["0"], metadata={
            "description": "1: the cell's window centre is inside the scan's mask (computed); 0: missing"})],
        "image-label": {"version": VERSION, "source": {"image": "../../"},
                        "colors": [{"label-value": 0, "rgba": [0, 0, 0, 0]},
                                   {"label-value": 1, "rgba": [0, 160, 0, 64]}],
                        "properties": [{"label-value": 0, "name": "missing"},
                                       {"label-value": 1, "name": "scanned"}]}}


def multiscale(placement: Placement, levels: int, *, name: str, kind: str | None = None,
               paths: list[str] | None = None, metadata: dict | None = None) -> dict[str, Any]:
    """One `multiscales` entry: axes c, y, x (y and x in the placement's unit), a dataset per level placed by
    `placement.map_transform`."""
    unit = {"unit": placement.unit} if placement.unit else {}
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit},
            {"name": "x", "type": "space", **unit}]
    datasets = []
    for level, path in enumerate(paths or [str(m) for m in range(levels)]):
        scale, translation = placement.map_transform(level)
        datasets.append({"path": path, "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, *scale]}, {"type": "translation", "translation": [0.0, *translation]}]})
    entry = {"name": name, "axes": axes, "datasets": datasets, "metadata": metadata or {}}
    return {**entry, "type": kind} if kind else entry


def level_shapes(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """The (rows, columns) of each level of the probability pyramid of a map of `shape` cells: halved (rounding up)
    until the largest side is at most `SMALLEST`."""
    shapes = [tuple(shape)]
    while max(shapes[-1]) > SMALLEST:
        shapes.append(tuple(math.ceil(n / 2) for n in shapes[-1]))
    return shapes


def _pyramid(group: Any, scores: Any, classes: int) -> list[tuple[int, int]]:
    """Write `probabilities/0`, `/1`, … into `group`; returns each level's (rows, columns).

    Every level is chunked across the map as `scores` is (a tile's cells), in blocks of classes of about
    `CHUNK_BYTES`. Level 0 is computed one chunk of scores at a time: blocks of 256 cells across chunks of 64 raised
    a 4096² scan's peak memory by 35 MB (zarr decodes the chunks a read touches concurrently), one chunk at a time
    by 2 MB."""
    from zarr.codecs import BloscCodec

    shapes = level_shapes(tuple(scores.shape[1:]))
    side = tuple(scores.chunks[1:])
    depth = max(1, min(classes, CHUNK_BYTES // math.prod(side)))  # classes per chunk
    pyramid = group.create_group(PROBABILITIES, overwrite=True)
    # LZ4, as `scores`: zarr's default zstd holds a few MB per chunk it compresses concurrently.
    arrays = [pyramid.create_array(str(m), shape=(classes, *shape), dtype="uint8", fill_value=0,
                                   chunks=(depth, *(min(c, n) for c, n in zip(side, shape, strict=True))),
                                   dimension_names=AXES, compressors=BloscCodec(cname="lz4", clevel=5,
                                                                                shuffle="noshuffle"))
              for m, shape in enumerate(shapes)]
    for top, left in _blocks(shapes[0], side):
        block = (slice(None), slice(top, top + side[0]), slice(left, left + side[1]))
        arrays[0][block] = _softmax_uint8(scores[block])
    for m in range(1, len(shapes)):
        for top, left in _blocks(shapes[m], side):
            finer = np.asarray(arrays[m - 1][:, 2 * top:2 * (top + side[0]), 2 * left:2 * (left + side[1])])
            even = np.pad(finer, ((0, 0), (0, finer.shape[1] % 2), (0, finer.shape[2] % 2)))  # 0: no probability
            # The four pixels of each 2 × 2 block as strided views: 20× faster than a max over reshaped axes.
            upper = np.maximum(even[:, 0::2, 0::2], even[:, 0::2, 1::2])
            arrays[m][:, top:top + side[0], left:left + side[1]] = np.maximum(
                upper, np.maximum(even[:, 1::2, 0::2], even[:, 1::2, 1::2]))
    return shapes


def _softmax_uint8(logits: Any) -> np.ndarray:
    """round(255 · softmax over the first axis), computed in place: one float32 copy of the block, not five. A
    missing cell (NaN: outside a scan's mask) is 0, and the mask label image says it is missing."""
    values = np.array(logits, dtype=np.float32)
    values -= values.max(axis=0, keepdims=True)
    np.exp(values, out=values)
    values /= values.sum(axis=0, keepdims=True)
    values *= 255
    np.nan_to_num(values, copy=False, nan=0.0)
    return np.rint(values, out=values).astype(np.uint8)


def _blocks(shape: tuple[int, int], side: tuple[int, int]):
    return ((top, left) for top in range(0, shape[0], side[0]) for left in range(0, shape[1], side[1]))


def _name_axes(array: Path) -> None:
    """Give the `scores` array of a store written before fc2conv wrote OME-Zarr the dimension names NGFF 0.5
    requires (c, y, x), rewriting its zarr.json atomically."""
    path = array / "zarr.json"
    meta = json.loads(path.read_text())
    if meta.get("dimension_names") == list(AXES):
        return
    meta["dimension_names"] = list(AXES)
    temporary = path.with_name(f".zarr.json.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(meta, indent=2))
    os.replace(temporary, path)
