"""Where the score map lies on the slide: the one convention behind the OME-Zarr map, `fc2conv view`, the QuPath
GeoJSON and the OME-TIFF.

**The slide's coordinates.** Physical coordinates are micrometres where the input records a pixel size, else the
pixels of its level 0 (unit None), or, for an OME-Zarr input, its own units. Each level of the input has a
transform index ↦ scale · index + translation that gives the *centre* of a pixel (the convention of OME-Zarr
(NGFF) and napari: index 0 is the centre of the first pixel). An OME-Zarr input brings its own `scale` and
`translation` per level (and its multiscale-wide ones). For the other readers level 0 has scale p (the pixel size,
or 1) and translation 0, and a level with downsample d covers level-0 pixels [k·d, (k + 1)·d), so its pixel k is
centred at p·(k·d + (d − 1)/2): scale p·d, translation p·(d − 1)/2 (QuPath's and OpenSlide's model of a pyramid).

**The map.** Along each axis, cell i covers pixels i·S … i·S + W − 1 of the scanned level (stride S, window W), so
its centre is at index i·S + (W − 1)/2 there. With (σ, τ) the scanned level's transform, the map as an image has
scale σ·S and translation τ + σ·(W − 1)/2: cell i is drawn as a square of one stride centred on its window. In
corner coordinates, where pixel k spans [k, k + 1) (QuPath, GeoJSON, TIFF), that square starts (W − S)/2 scanned
pixels after the window: "half the window minus half a stride" is the corner offset, and the pixel-centre (NGFF)
translation is (W − 1)/2, larger by (S − 1)/2. Pyramid level m of the map holds 2^m × 2^m cells per pixel and is
centred on its block: scale σ·S·2^m, translation τ + σ·((W − 1)/2 + S·(2^m − 1)/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Placement"]

Pair = tuple[float, float]


@dataclass(frozen=True)
class Placement:
    """The scanned level's and level 0's pixel-centre transforms (y, x), the model's stride and window in pixels of
    the scanned level, level 0's size, and the unit of the physical coordinates ("micrometer", another NGFF unit, or
    None for pixels)."""

    level_scale: Pair
    level_translation: Pair
    base_scale: Pair
    base_translation: Pair
    stride: tuple[int, int]
    window: tuple[int, int]
    base_size: tuple[int, int]
    unit: str | None = None

    @classmethod
    def area(cls, *, downsample: Pair, pixel_size: Pair | None, stride, window, base_size) -> Placement:
        """Level 0 at scale p (the level's pixel size over its downsample, or 1) and translation 0; the scanned
        level's pixels covering `downsample` level-0 pixels each (see the module docstring)."""
        base = tuple(p / d for p, d in zip(pixel_size, downsample, strict=True)) if pixel_size else (1.0, 1.0)
        return cls(tuple(b * d for b, d in zip(base, downsample, strict=True)),
                   tuple(b * (d - 1) / 2 for b, d in zip(base, downsample, strict=True)), base, (0.0, 0.0),
                   tuple(stride), tuple(window), tuple(base_size), "micrometer" if pixel_size else None)

    def map_transform(self, level: int = 0) -> tuple[Pair, Pair]:
        """(scale, translation) of pyramid level `level` of the map: index ↦ physical centre of its pixel."""
        f = 2**level
        scale = tuple(s * stride * f for s, stride in zip(self.level_scale, self.stride, strict=True))
        translation = tuple(t + s * ((w - 1) / 2 + stride * (f - 1) / 2) for s, t, w, stride in
                            zip(self.level_scale, self.level_translation, self.window, self.stride, strict=True))
        return scale, translation

    def physical(self, index: Pair, level: int = 0) -> Pair:
        """The physical centre of map pixel `index` (row, column) at pyramid level `level`."""
        scale, translation = self.map_transform(level)
        return tuple(s * i + t for s, i, t in zip(scale, index, translation, strict=True))

    def to_base_edges(self, point: Pair) -> Pair:
        """A physical point in level-0 pixel-edge coordinates (pixel k spans [k, k + 1): QuPath, GeoJSON)."""
        return tuple((p - t) / s + 0.5 for p, t, s in zip(point, self.base_translation, self.base_scale, strict=True))

    def level_edges_to_base(self, edges: Pair) -> Pair:
        """Pixel-edge coordinates of the scanned level in level-0 pixel-edge coordinates (× the downsample for
        a pyramid read by tifffile or OpenSlide)."""
        point = tuple(s * (e - 0.5) + t for s, e, t in
                      zip(self.level_scale, edges, self.level_translation, strict=True))
        return self.to_base_edges(point)

    def base_edges_to_level(self, edges: Pair) -> Pair:
        """Level-0 pixel-edge coordinates (QuPath's, GeoJSON's) in pixel-edge coordinates of the scanned level: the
        inverse of `level_edges_to_base`."""
        point = tuple(s * (e - 0.5) + t for s, e, t in zip(self.base_scale, edges, self.base_translation, strict=True))
        return tuple((p - t) / s + 0.5 for p, t, s in zip(point, self.level_translation, self.level_scale,
                                                            strict=True))

    def cell_squares(self) -> tuple[Pair, Pair]:
        """(start, side) per axis, in level-0 pixel-edge coordinates, of the square cell 0 is drawn as: cell i's
        square is [start + i·side, start + (i + 1)·side)."""
        side = tuple(s * stride / b for s, stride, b in zip(self.level_scale, self.stride, self.base_scale,
                                                             strict=True))
        centre = self.to_base_edges(self.physical((0, 0)))
        return tuple(c - d / 2 for c, d in zip(centre, side, strict=True)), side

    def to_attrs(self) -> dict[str, Any]:
        return {"unit": self.unit, "level_scale": list(self.level_scale),
                "level_translation": list(self.level_translation), "base_scale": list(self.base_scale),
                "base_translation": list(self.base_translation), "base_size": list(self.base_size)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Placement:
        """The placement a store records; for a store written before fc2conv recorded one, the area convention from
        its source's downsample and pixel size (exact for every input but OME-Zarr with translations)."""
        stride, window, source = tuple(attrs["stride"]), tuple(attrs["window"]), attrs["source"]
        found = attrs.get("placement")
        if isinstance(found, dict):
            return cls(tuple(found["level_scale"]), tuple(found["level_translation"]), tuple(found["base_scale"]),
                       tuple(found["base_translation"]), stride, window, tuple(found["base_size"]), found["unit"])
        downsample = tuple(source.get("downsample") or (1.0, 1.0))
        base_size = tuple(round(n * d) for n, d in zip(source["size"], downsample, strict=True))
        return cls.area(downsample=downsample, pixel_size=source.get("pixel_size_um"), stride=stride, window=window,
                        base_size=base_size)
