"""The end of a scan, once every tile is done: the store made an OME-Zarr image, the other outputs written beside it,
then all of them put in place together, or none.

Order: the store is marked complete and given its OME-Zarr metadata and probability pyramid where it is (the hidden
`.OUT.partial` this scan built, or the store a resumed scan finishes); the overview, the detections (CSV and
GeoJSON) and the OME-TIFF are written to hidden staging files beside their targets; then one commit
(`fc2conv.runtime.files.atomic.staged_outputs`) renames the store and every staging file over its target, the existing
targets set aside first and put back if any rename fails. So a failure or an interrupt anywhere here (a full disk, a
writer's error, Ctrl-C, SIGTERM) leaves every output path as it was before the command and no staging file, and the
store this call created is removed with them.

With `--resume` the store is changed in place by design, and "as it was" means: it keeps every tile it had (all of
them, now) at the path where it was, so `--resume` finishes it again without computing a tile; the other outputs
are, as always, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import ConversionError, ScanError, first_line
from ..files.atomic import staged_outputs
from . import ngff, outputs, qupath, stitch
from .overview import overview
from .placement import Placement

__all__ = ["finish"]


def finish(store: Path, out: Path, targets: dict[str, Path], chosen: list[int], attrs: dict[str, Any], *,
           threshold: float, iou: float, force: bool, created: str | None,
           thumbnail: Callable[[tuple[int, int]], Any] | None = None) -> dict[str, Any]:
    """Finish the complete `store` (see the module docstring) and put it at `out` with the `targets` ({name: path}:
    overview, detections, geojson, ome_tiff); returns them and the detections' count as `ScanResult` fields.
    `created`: the token of the store if this call created it (removed on failure), else None (kept).
    `thumbnail(shape)`: the slide as an RGB picture, under the overview's map."""
    try:
        stitch.mark_complete(store, attrs)
        placement = Placement.from_attrs(attrs)
        ngff.write(store, attrs, placement)
        with staged_outputs(list(targets.values()), force=force, prepared={store: out} if store != out else {}) \
                as staged:
            return {**targets, **_write(store, dict(zip(targets, staged, strict=True)), chosen, attrs, placement,
                                        threshold=threshold, iou=iou, thumbnail=thumbnail)}
    except BaseException as e:
        if created is not None:
            stitch.discard(store, created)
        if not isinstance(e, ConversionError | OSError):
            raise
        said = str(e) if isinstance(e, ConversionError) else f"could not finish {out}: {first_line(e)}"
        kept = ("this scan's store was removed" if created is not None else
                f"{store} keeps its tiles: run again with resume=True")
        raise ScanError(f"{said}; no output was changed, and {kept}") from e


def _write(store: Path, staging: dict[str, Path], chosen: list[int], attrs: dict[str, Any], placement: Placement, *,
           threshold: float, iou: float, thumbnail: Callable[[tuple[int, int]], Any] | None) -> dict[str, Any]:
    """Write each asked-for output to its staging path; returns {"found": count} when detections were asked for."""
    import zarr

    scores = zarr.open_array(str(store / "scores"), mode="r")
    written: dict[str, Any] = {}
    if "overview" in staging:
        overview(scores, chosen, staging["overview"], labels=attrs["labels"],
                 colors=outputs.class_colors(attrs["labels"]), stride=tuple(attrs["stride"]),
                 window=tuple(attrs["window"]), image=tuple(attrs["image_size"]), thumbnail=thumbnail)
    if "detections" in staging:
        found = outputs.detections(scores, chosen, attrs["labels"], stride=tuple(attrs["stride"]),
                                   window=tuple(attrs["window"]), image=tuple(attrs["image_size"]),
                                   threshold=threshold, iou=iou)
        outputs.write_csv(found, staging["detections"])
        outputs.write_geojson(found, staging["geojson"], attrs["labels"], placement.level_edges_to_base)
        written["found"] = len(found)
    if "ome_tiff" in staging:
        group = zarr.open_group(str(store / ngff.PROBABILITIES), mode="r")
        pyramid = [group[str(m)] for m in range(len(group.attrs["fc2conv"]["levels"]))]
        qupath.write_ome_tiff(pyramid, placement, chosen, attrs["labels"], outputs.class_colors(attrs["labels"]),
                              staging["ome_tiff"])
    return written
