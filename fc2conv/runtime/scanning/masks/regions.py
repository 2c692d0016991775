"""`--mask REGIONS.geojson`: polygons in level-0 pixels, as QuPath exports annotations (File › Export objects as
GeoJSON); only the cells whose window centre lies inside one are computed.

Accepted: a FeatureCollection, a list of Features (older QuPath exports), one Feature, or a bare Polygon or
MultiPolygon; coordinates [x, y] in level-0 pixel-edge coordinates (x to the right, y down, pixel k spanning
[k, k + 1), QuPath's and fc2conv's detections'). Each polygon is filled by the even-odd rule over its rings, so a
hole (an inner ring) is left out and the overlapping lobes of a self-intersecting ring alternate, as SVG's
`evenodd` fills them; polygons are united. Parts outside the slide are cut off; polygons wholly outside it are
refused when no polygon overlaps the slide.

The file is checked before it is trusted: at most `MAX_BYTES` bytes, nested no deeper than JSON allows Python,
finite numbers only (no NaN or Infinity) within ±`MAX_COORDINATE`, every geometry a Polygon or MultiPolygon of rings
of at least three points, at most `MAX_VERTICES` vertices in all. Errors name the file and the feature.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ....errors import ScanError
from ...files.paths import file_sha256
from ..placement import Placement
from ..readers import Source
from . import CellGrid

__all__ = ["MAX_BYTES", "MAX_VERTICES", "RegionsMask", "read_polygons", "regions_mask"]

MAX_BYTES = 2**28
MAX_VERTICES = 10_000_000
MAX_COORDINATE = 1e9

Ring = np.ndarray  # n × 2 (x, y)


class RegionsMask:
    """Polygons (each a list of rings, n × 2 arrays of (row, column) in cell-index coordinates: cell i's centre is
    at i) filled by the even-odd rule and united."""

    def __init__(self, polygons: list[list[np.ndarray]], description: dict[str, Any]):
        self.polygons, self.description = polygons, description
        self._bounds = [(min(r[:, 0].min() for r in p), min(r[:, 1].min() for r in p),
                         max(r[:, 0].max() for r in p), max(r[:, 1].max() for r in p)) for p in polygons]

    def cells(self, box: tuple[int, int, int, int]) -> np.ndarray:
        from skimage.draw import polygon as fill

        top, left, bottom, right = box
        shape = (bottom - top, right - left)
        found = np.zeros(shape, bool)
        for rings, (r0, c0, r1, c1) in zip(self.polygons, self._bounds, strict=True):
            if r1 < top - 1 or r0 > bottom or c1 < left - 1 or c0 > right:
                continue
            inside = np.zeros(shape, bool)
            for ring in rings:
                rr, cc = fill(ring[:, 0] - top, ring[:, 1] - left, shape=shape)
                flip = np.zeros(shape, bool)
                flip[rr, cc] = True
                inside ^= flip
            found |= inside
        return found


def regions_mask(path: Path, *, source: Source, placement: Placement, grid: CellGrid) -> RegionsMask:
    """The polygons of the GeoJSON at `path`, placed on the map of the scanned level of `source`."""
    polygons = read_polygons(path)
    base_h, base_w = placement.base_size
    overlapping = [p for p in polygons if _overlaps(p[0], base_w, base_h)]
    if not overlapping:
        xs = [v for p in polygons for r in p for v in (r[:, 0].min(), r[:, 0].max())]
        ys = [v for p in polygons for r in p for v in (r[:, 1].min(), r[:, 1].max())]
        raise ScanError(f"mask={path}: none of its {len(polygons)} polygons overlaps the slide (level 0 is "
                        f"{base_w:,} pixels wide and {base_h:,} high; the polygons span x {min(xs):,.0f}…"
                        f"{max(xs):,.0f}, y {min(ys):,.0f}…{max(ys):,.0f}); GeoJSON masks are in level-0 "
                        "pixels, as QuPath exports them")
    placed = []
    for rings in overlapping:
        placed.append([_to_cells(ring, placement, grid) for ring in rings])
    description = {"kind": "geojson", "path": str(path.resolve()), "sha256": file_sha256(path),
                   "polygons": len(placed), "outside_slide": len(polygons) - len(placed)}
    return RegionsMask(placed, description)


def read_polygons(path: Path) -> list[list[Ring]]:
    """Every polygon of the GeoJSON at `path` as its rings (n × 2 arrays of x, y), checked (module docstring)."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ScanError(f"mask={path} is {size / 2**20:,.0f} MiB, more than the {MAX_BYTES // 2**20} MiB a "
                        "GeoJSON mask may be")
    try:
        found = json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except RecursionError:
        raise ScanError(f"mask={path}: its JSON is nested too deep to be GeoJSON") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ScanError(f"mask={path} is not JSON: {str(e)[:200]}") from None
    features = _features(found, path)
    polygons: list[list[Ring]] = []
    vertices = 0
    for index, geometry in features:
        for rings in _polygons(geometry, path, index):
            vertices += sum(len(r) for r in rings)
            if vertices > MAX_VERTICES:
                raise ScanError(f"mask={path} has more than {MAX_VERTICES:,} vertices; simplify its polygons")
            polygons.append(rings)
    if not polygons:
        raise ScanError(f"mask={path} holds no polygon: a GeoJSON mask needs Polygon or MultiPolygon regions")
    return polygons


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a finite number")


def _features(found: Any, path: Path) -> list[tuple[int, Any]]:
    """(feature index, geometry) of every feature of a FeatureCollection, a list of Features, a Feature or a bare
    geometry."""
    if isinstance(found, list):
        items = found
    elif isinstance(found, dict) and found.get("type") == "FeatureCollection":
        items = found.get("features")
        if not isinstance(items, list):
            raise ScanError(f"mask={path}: its FeatureCollection's `features` is not a list")
    else:
        items = [found]
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ScanError(f"mask={path}: feature {index} is not a JSON object")
        out.append((index, item.get("geometry") if item.get("type") == "Feature" else item))
    return out


def _polygons(geometry: Any, path: Path, index: int) -> list[list[Ring]]:
    where = f"mask={path}: feature {index}"
    if not isinstance(geometry, dict):
        raise ScanError(f"{where} has no geometry object")
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        return [_rings(coordinates, where)]
    if kind == "MultiPolygon" and isinstance(coordinates, list):
        return [_rings(polygon, f"{where}, polygon {k}") for k, polygon in enumerate(coordinates)]
    shown = kind if isinstance(kind, str) and len(kind) < 40 else "not a geometry"
    raise ScanError(f"{where} is a {shown}; a mask's regions are Polygon or MultiPolygon geometries")


def _rings(coordinates: Any, where: str) -> list[Ring]:
    if not isinstance(coordinates, list) or not coordinates:
        raise ScanError(f"{where}: its coordinates are not a list of rings")
    rings = []
    for k, ring in enumerate(coordinates):
        if not isinstance(ring, list) or not all(isinstance(p, list) and 2 <= len(p) <= 3 and
                                                 all(_finite(v) for v in p) for p in ring):
            raise ScanError(f"{where}, ring {k}: every point must be [x, y] of finite numbers")
        points = np.array([p[:2] for p in ring], dtype=np.float64)
        if np.abs(points).max() > MAX_COORDINATE:
            raise ScanError(f"{where}, ring {k} has a coordinate beyond ±{MAX_COORDINATE:.0e} pixels: not a "
                            "slide's")
        if len(np.unique(points, axis=0)) < 3:
            raise ScanError(f"{where}, ring {k} has fewer than three distinct points: it encloses nothing")
        rings.append(points)
    return rings


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _overlaps(ring: Ring, width: int, height: int) -> bool:
    return ring[:, 0].max() > 0 and ring[:, 0].min() < width and ring[:, 1].max() > 0 and ring[:, 1].min() < height


def _to_cells(ring: Ring, placement: Placement, grid: CellGrid) -> np.ndarray:
    """A ring of level-0 (x, y) edge coordinates as (row, column) cell indices of the map."""
    rows, cols = placement.base_edges_to_level((ring[:, 1], ring[:, 0]))
    return np.stack([grid.to_cells(rows, 0), grid.to_cells(cols, 1)], axis=1)
