"""The scan driver: `scan` checks its arguments, opens the source and the model, plans the tiles (and the mask),
opens the store, runs the tiles here or on Dask, and puts every output in place; `ScanResult` is what it returns.
The package's docstring (`fc2conv.scan`) gives the flow, module by module, and the guarantees.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendError, InputError, ScanError
from ..backends import AUTO
from ..cpu import PrecisionWarning
from ..images import MAX_PIXELS
from . import dispatch, outputs, qupath, samples, seams, stitch, tiles
from .arguments import check_arguments
from .finish import finish
from .masks import selection
from .options import ScanOptions
from .samples import BadInput, SampleRangeWarning, TileReport
from .source import open_source
from .thumbnail import picture
from .worker import ModelSpec, file_sha256, load, map_length

__all__ = ["ScanOptions", "ScanResult", "scan", "scan_with"]


@dataclass(frozen=True)
class ScanResult:
    """A finished scan: the store at `path` (open its map with `scores()`), and what was written and measured."""

    path: Path
    map_size: tuple[int, int]
    image_size: tuple[int, int]
    tiles: int
    computed: int
    megapixels: float
    seconds: float
    metadata: dict[str, Any]
    overview: Path | None = None
    detections: Path | None = None
    geojson: Path | None = None
    ome_tiff: Path | None = None
    found: int | None = None
    outside_unit_range: int = 0  # float samples read by this call outside [0, 1] (see `fc2conv.scan.samples`)
    skipped: int = 0  # tiles with no cell in the mask: never read or computed
    sample_range: tuple[float, float] | None = None  # smallest and largest float sample read by this call
    seam: dict[str, Any] | None = None  # an approximate scan's seams, measured (`fc2conv.scan.seams.measure`)

    @property
    def megapixels_per_second(self) -> float:
        """Image megapixels computed by this call per second of its whole run (cluster start-up included)."""
        return self.megapixels / max(self.seconds, 1e-9)

    def scores(self) -> Any:
        """The classes × H' × W' score map as a read-only zarr array."""
        import zarr

        return zarr.open_array(str(self.path / "scores"), mode="r")

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "map_size": list(self.map_size), "image_size": list(self.image_size),
                "tiles": self.tiles, "computed": self.computed, "seconds": round(self.seconds, 3),
                "megapixels_per_second": round(self.megapixels_per_second, 3),
                "approximate": self.metadata["approximate"],
                **{key: self.metadata.get(key) for key in ("backend", "precision", "exact")},
                "overview": self.overview and str(self.overview),
                "detections": self.detections and str(self.detections),
                "geojson": self.geojson and str(self.geojson), "ome_tiff": self.ome_tiff and str(self.ome_tiff),
                "found": self.found, "skipped": self.skipped, "mask": self.metadata.get("mask"),
                "outside_unit_range": self.outside_unit_range, "approximate_seam": self.seam,
                "sample_range": list(self.sample_range) if self.sample_range else None}


def scan(source: str | os.PathLike, *, model: str | os.PathLike, out: str | os.PathLike, tile: int = 2048,
         workers: int | None = None, scheduler: str | None = None, level: int | None = None,
         mpp: float | None = None, reader: str = "auto", classes: list[str] | None = None,
         overview: str | os.PathLike | None = None, detections: str | os.PathLike | None = None,
         threshold: float = 0.5, iou: float = 0.3, resume: bool = False, force: bool = False,
         dtype: str = "float32", approximate: bool = False, threads: int | None = None,
         progress: bool | None = None, max_pixels: int | None = MAX_PIXELS, backend: str = "onnxruntime",
         precision: str = "fp32", ome_tiff: str | os.PathLike | None = None,
         mask: str | os.PathLike | None = None, context: int | None = None) -> ScanResult:
    """Scan `source` with the ONNX `model` into the zarr store `out` (see the module docstring); every other
    keyword is a setting of `ScanOptions`, which says what each does (`scan_with` takes them as one object).

    Every scan also writes the map as OME-Zarr into `out` (`fc2conv.scan.ngff`). The store records the backend and
    precision, and `exact: false` for anything but float32; `resume` refuses other settings, and another mask. With
    a mask, only tiles with cells whose window centre is inside are read and computed, the other cells are missing
    (NaN), and the cells' mask is stored. An approximate scan measures its seams against one pass over the tiles
    around a tile corner and records them as `approximate_seam` (`fc2conv.scan.seams`).

    `InputError` for bad arguments and inputs, before anything is written (`ScanError` for a store it cannot resume,
    `BackendError` for a backend that cannot run the model); `BadInput` (an `InputError`) when a tile meets NaN or
    infinite samples mid-scan, and the unfinished store is removed (left, and named, when
    tiles ran on a `scheduler`'s cluster, where running tasks may still write to it); `ScanError` (or the
    interrupt itself) when writing the outputs fails once the tiles are done, every output path then as it was
    before the call (`fc2conv.scan.finish`). `SampleRangeWarning` after a scan that read float samples outside
    [0, 1].
    """
    options = ScanOptions(tile=tile, workers=workers, scheduler=scheduler, level=level, mpp=mpp, reader=reader,
                          classes=classes, overview=overview, detections=detections, threshold=threshold, iou=iou,
                          resume=resume, force=force, dtype=dtype, approximate=approximate, threads=threads,
                          progress=progress, max_pixels=max_pixels, backend=backend, precision=precision,
                          ome_tiff=ome_tiff, mask=mask, context=context)
    return scan_with(source, model, out, options)


def scan_with(source: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
              options: ScanOptions) -> ScanResult:
    """`scan` with its settings as one checked `ScanOptions` (what the CLI passes)."""
    started = time.perf_counter()
    _require("zarr", "tifffile", *(() if options.here else ("distributed",)))
    out, model = Path(out), Path(model)
    targets = check_arguments(out, model, Path(source), options)
    threads = options.threads if options.threads is not None or options.here else \
        dispatch.worker_threads(options.workers)
    spec = ModelSpec(str(model.resolve()), file_sha256(model), threads, options.backend, options.precision)
    dense = load(spec)
    if dense.caution:
        warnings.warn(dense.caution, PrecisionWarning, stacklevel=2)
    halo, field, approximate = seams.halo(dense.metadata, str(model), options.approximate, options.context)
    src = open_source(source, channels=dense.channels, reader=options.reader, level=options.level, mpp=options.mpp,
                      max_pixels=options.max_pixels)
    dense.preprocess(src.read(0, 0, 1, 1))  # the model takes these samples (channels, type), or InputError
    stride, window = tuple(dense.metadata["stride"]), tuple(dense.metadata["window"])
    placement = src.placement(stride, window)
    cells = tuple(_map_length(dense, axis, src.size[axis], stride, window, halo) for axis in range(2))
    asked, tile = options.tile, min(options.tile, max(src.size))  # a tile larger than the image is the image
    plan = tiles.make_plan(src.size, stride=stride, window=window, halo=halo, tile=tile, cells=cells)
    labels = dense.metadata.get("labels") or [str(k) for k in range(dense.classes)]
    shown = f"{asked} (the image's longer side, {tile})" if asked > tile else f"{tile}"
    sizes = {"samples": src.samples, "sample_bytes": src.dtype.itemsize, "channels": dense.channels,
             "classes": len(labels), "score_bytes": np.dtype(options.dtype).itemsize, "decode_bytes": src.chunk_bytes}
    tiles.check_memory(plan, shown, **sizes)
    masked = _masked(options.mask, src, placement, plan, stride, window, options.max_pixels)
    chosen_tiles = masked[1].tiles if masked else plan.tiles()
    if options.precision == AUTO:  # chosen on the first tile, in this process; every worker then runs the chosen path
        spec = _choose_path(dense, spec, src, chosen_tiles[0])
    chosen = outputs.choose_classes(options.classes, labels)
    if options.ome_tiff is not None and len(chosen) > qupath.MAX_CHANNELS:  # each channel: a plane of the slide
        raise InputError(f"ome_tiff={options.ome_tiff}: {len(chosen)} classes would make {len(chosen)} channels of "
                         f"the slide's full size; choose at most {qupath.MAX_CHANNELS} with classes=")
    run = {"model_sha256": spec.sha256, "source": src.spec.path, "reader": src.spec.reader, "level": src.spec.level,
           "source_size_and_mtime": list(src.spec.stamp), "tile": tile, "dtype": options.dtype,
           "approximate": approximate, "context": options.context or None, "backend": spec.backend,
           "precision": spec.precision, "mask": masked[1].sha256 if masked else None}
    # How the scores are computed; `exact` (the float32 map, tiles equal to one pass) only in float32.
    numbers = {**dense.numerics, "exact": dense.numerics["precision"] == "fp32" and not approximate}
    attrs = {"version": 1, "classes": len(labels), "labels": labels, "mode": dense.metadata["mode"],
             "stride": list(stride), "window": list(window), "receptive_field": field,
             "halo_cells": [list(h) for h in halo], "approximate": approximate,
             "image_size": list(src.size), "map_size": list(cells), "tile": tile, "tile_cells": list(plan.tile_cells),
             "source": src.describe(), "model": {"path": spec.path, "sha256": spec.sha256}, "dtype": options.dtype,
             "cell_size_um": src.pixel_size and [p * s for p, s in zip(src.pixel_size, stride, strict=True)],
             "placement": placement.to_attrs(), **numbers, "run": run,
             **({"mask": _mask_attrs(*masked, cells)} if masked else {})}
    created = None  # (store, token) of the store this call creates, which a `BadInput` removes
    try:
        with dispatch.executor(workers=options.workers, scheduler=options.scheduler) as run_tiles:
            store, token, attrs, new = _store(out, resume=options.resume, force=options.force, plan=plan,
                                              dtype=options.dtype, attrs=attrs, masked=bool(masked))
            created = (store, token) if new else None
            if new and masked:
                selection.write(store, *masked)
            done = stitch.done_mask(store)
            todo = [t for t in chosen_tiles if not done[t.index]]
            report = run_tiles(stitch.Job(spec, src.spec, str(store), token), todo, progress=options.progress) if todo \
                else TileReport()
    except BadInput as e:  # resuming would meet the same samples: the store this call created goes
        if created is not None and options.scheduler is None:  # the tiles ran here or on the local cluster, now closed
            stitch.discard(*created)
        elif created is not None:  # tasks still running on that cluster may write to it
            raise BadInput(f"{e}; the unfinished store {created[0]} is left, since tasks still running on the "
                           "cluster may write to it: remove it") from None
        raise
    if not stitch.done_mask(store).all():
        raise ScanError(f"some tiles of {store} were not written; run again with resume=True")
    # A store begun by an older fc2conv records no placement: this scan's source is the same level of the same file.
    attrs = {**attrs, "placement": attrs.get("placement") or placement.to_attrs(),
             "outputs": {name: str(path.resolve()) for name, path in targets.items()}}
    if approximate and (todo or "approximate_seam" not in attrs):  # measured once the map is whole
        attrs["approximate_seam"] = seams.measure(plan, chosen_tiles, spec, src.spec, store, **sizes)
    written = finish(store, out, targets, chosen, attrs, threshold=options.threshold, iou=options.iou,
                     force=options.force,
                     created=created[1] if created else None, thumbnail=functools.partial(picture, src))
    warning = samples.range_warning(report, src.spec.path)
    if warning:
        warnings.warn(warning, SampleRangeWarning, stacklevel=2)
    return ScanResult(out, cells, src.size, len(plan.tiles()), len(todo), report.pixels / 1e6,
                      time.perf_counter() - started, attrs, **written, outside_unit_range=report.outside,
                      sample_range=report.sample_range, skipped=len(masked[1].skipped) if masked else 0,
                      seam=attrs.get("approximate_seam"))


def _choose_path(dense, spec: ModelSpec, src, first) -> ModelSpec:
    """`spec` on the path `--precision auto` chooses for the scan's first tile `first` (`fc2conv.runtime.auto`): a
    tile's input is the size every path is timed at, and its samples are checked first (`BadInput` before any
    output)."""
    pixels = src.read(*first.read)
    samples.check(pixels, first, src.spec.path)
    dense.infer(dense.preprocess(pixels, max_pixels=None))
    return dataclasses.replace(spec, backend=dense.choice.backend, precision=dense.choice.precision)


def _require(*modules: str) -> None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendError(f"fc2conv scan needs {', '.join(missing)}: pip install 'fc2conv[scan]' (on Python 3.11 "
                           "or later, which zarr 3 requires)")


def _map_length(dense, axis: int, length: int, stride: tuple, window: tuple, halo: tuple) -> int:
    """The one-pass map's length along `axis`, from a strip at the image's end (see `fc2conv.scan.tiles`)."""
    if length < window[axis]:
        return 0  # make_plan names the image that is smaller than one window
    start = tiles.probe_start(length, stride=stride[axis], window=window[axis], halo=halo[axis])
    return start // stride[axis] + map_length(dense, axis, length - start)


def _masked(mask, src, placement, plan, stride, window, max_pixels) -> tuple | None:
    """(mask, selection) of a masked scan (`fc2conv.scan.masks`), or None without `mask`; `ScanError` for a
    mask that covers no cell of the map."""
    if mask is None:
        return None
    from .masks import CellGrid, open_mask

    opened = open_mask(mask, source=src, placement=placement, grid=CellGrid(stride, window), max_pixels=max_pixels)
    chosen = selection.select(plan, opened)
    if not chosen.tiles:
        raise ScanError(f"mask={mask} covers no cell of the {plan.cells[0]}×{plan.cells[1]} map (no window "
                        "centre lies inside it): there is nothing to scan")
    return opened, chosen


def _mask_attrs(opened, chosen, cells: tuple[int, int]) -> dict[str, Any]:
    """What the store records of its mask: the mask's own description, and the cells and tiles it kept."""
    fraction = round(chosen.cells / (cells[0] * cells[1]), 6)
    return {**opened.description, "cells": chosen.cells, "cell_fraction": fraction,
            "tiles_computed": len(chosen.tiles), "tiles_skipped": len(chosen.skipped), "sha256_cells": chosen.sha256}


def _store(out: Path, *, resume: bool, force: bool, plan, dtype: str, attrs: dict,
           masked: bool = False) -> tuple[Path, str, dict, bool]:
    """(store to write, its token, its attributes, whether this call created it): the finished or partial store to
    resume, or a new partial."""
    partial = stitch.partial_path(out)
    if resume:
        for existing in (out, partial):
            if existing.exists():
                token, found = stitch.open_run(existing, attrs["run"], plan, attrs["classes"])
                return existing, token, found, False
    token = stitch.create(partial, plan, classes=attrs["classes"], dtype=dtype, attrs=attrs, masked=masked)
    return partial, token, {**attrs, "token": token}, True

