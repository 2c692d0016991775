"""Scan images of any size: the dense map of an exported model, tile by tile, equal to the one-pass map.

    from fc2conv.scan import scan
    result = scan("slide.tif", model="model.onnx", out="slide.zarr", tile=2048, workers=2,
                  overview="overview.png", detections="found.csv", ome_tiff="map.ome.tif")

The flow, one module each: `options` checks the settings (`ScanOptions`, made once and passed whole), `arguments`
the files, and `paths` the outputs against each other and the inputs → `source` (with `readers`, `tiff` and
`zarr_source`) reads a level of the input lazily → `tiles` plans tiles on the stride grid with the receptive
field's halo (`seams`: or an approximate scan's, whose seams it measures at the end) → `worker` evaluates a tile in
the model's session (one per process), `samples` checking what it read → `stitch` writes the owned cells into a
chunked zarr store and records each finished tile → `dispatch` runs the tiles here or on Dask (`tasks`: a batch of
them in one process) → `finish` puts every output in place together:
`ngff` adds the OME-Zarr metadata and the probability pyramid, placed on the slide by `placement`, `outputs` draws
the overview and finds the detections (GeoJSON for QuPath), `qupath` writes the map as a pyramidal OME-TIFF on the
slide's level-0 grid. `quiet` holds back the libraries' logs. Nothing here imports torch.

Guarantees: the stitched map equals the one-pass map of the same model on the same image (float32: max
|tiled − one pass| / max |one pass| ≤ 1e-5) for every model whose metadata gives a receptive field; at reduced
precision (`backend`/`precision`, or an int8 file) it equals a one-pass run of the same backend and precision
(measured bit for bit on the digits CNN, ResNet18 and ResNet50 in every path of `bench.py --precision`; tested to
1e-5), and the store records `exact: false`. Memory is bounded by the tile, not the image; `OUT.zarr` appears only
complete (built as `.OUT.zarr.partial`, then renamed together with the other outputs, all or none: `finish`); a
killed worker's tiles are recomputed; `resume=True` skips the tiles already written and ends equal to an
uninterrupted scan. Models whose cells see the whole input are refused unless `approximate=True`; such a scan
measures its seams and `context` makes them smaller (`seams`).

Hostile inputs: files are checked before they are trusted (a TIFF header against its data, OME-Zarr metadata
field by field, dataset paths and links kept inside the store; see `tiff` and `zarr_source`); a tile is clamped
to the image and refused when its buffers exceed `TILE_MEMORY_BUDGET` (so is a file whose own blocks do, and a
plan of more than `tiles.MAX_TILES` tiles); no output may be another output or an input, lie inside one or hold
one (`paths`); every sample a tile reads is checked (`samples`): NaN or infinity stops the scan with `BadInput`
and leaves no store, float samples outside [0, 1] end in one `SampleRangeWarning`.
"""

from __future__ import annotations

from .driver import ScanOptions, ScanResult, scan, scan_with
from .samples import BadInput, SampleRangeWarning
from .tiles import TILE_MEMORY_BUDGET

__all__ = ["TILE_MEMORY_BUDGET", "BadInput", "SampleRangeWarning", "ScanOptions", "ScanResult", "scan", "scan_with"]
