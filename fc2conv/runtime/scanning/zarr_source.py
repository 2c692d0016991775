"""zarr input: a zarr array (Y×X, Y×X×C or C×Y×X), or an OME-Zarr group whose `multiscales` metadata gives the
levels, the axes and the pixel size.

OME metadata is a JSON document anyone can write, so each field is checked before it is used, and an error names
the field (`multiscales[0].datasets[1].path`): `multiscales` a non-empty list of objects; `axes` (when given) a
list of names or objects with a text `name` (fc2conv goes by the first letter: y, x, c/s, others of length 1)
and an optional text `unit`; `datasets` a non-empty list of objects whose `path` is a relative path of names
inside the store (no `..`, `.`, empty or absolute parts) naming an array with one dimension per axis, and which,
with everything below it, resolves inside the store after following symbolic links (a link out of the store is
refused, like `..`); a `scale` transformation lists one positive finite number per axis, a `translation` one
finite number per axis. The scale and translation of each level (with the multiscale's own, when given) also say
where the map lies on the slide (`fc2conv.scan.placement`).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputError, first_line, translated
from .placement import Placement
from .readers import UNITS_UM, AxesView, Source, SourceSpec, downsample

__all__ = ["Levels", "ZarrSource", "check_contained", "read_levels"]


@dataclass(frozen=True)
class Levels:
    """A zarr input's arrays finest first, their axes (one letter each), pixel size in µm per level (or None), and
    how errors name each level."""

    arrays: list
    axes: str
    scales: list
    names: list[str]
    transforms: list  # per level, ((scale y, x), (translation y, x)) in `unit`, or None where it has no scale
    unit: str | None = None


class ZarrSource(Source):
    def __init__(self, spec: SourceSpec):
        self.spec = spec
        found = read_levels(spec.path)
        if not 0 <= spec.level < len(found.arrays):
            raise InputError(f"{spec.path} has levels 0 … {len(found.arrays) - 1}; got level={spec.level}")
        array = found.arrays[spec.level]
        self._view = AxesView(array, found.axes, found.names[spec.level])
        self.size, self.samples, self.dtype = self._view.size, self._view.samples, np.dtype(array.dtype)
        base = AxesView(found.arrays[0], found.axes, found.names[0]).size
        self.downsample = downsample(spec.path, base, self.size, spec.level)
        self.pixel_size = found.scales[spec.level]
        self.chunk_bytes = math.prod(array.chunks) * self.dtype.itemsize
        self.base_size = base
        self._transforms, self._unit = (found.transforms[0], found.transforms[spec.level]), found.unit

    def placement(self, stride: tuple[int, int], window: tuple[int, int]) -> Placement:
        """The level's own OME transforms (and level 0's), where the metadata gives scales; else the default."""
        base, level = self._transforms
        if base is None or level is None:
            return super().placement(stride, window)
        return Placement(level[0], level[1], base[0], base[1], tuple(stride), tuple(window), self.base_size,
                         self._unit)

    @staticmethod
    def levels(spec: SourceSpec, max_pixels: int | None) -> list:
        found = read_levels(spec.path)
        return [(AxesView(array, found.axes, name).size, scale)
                for array, scale, name in zip(found.arrays, found.scales, found.names, strict=True)]

    def _read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        return self._view.read(top, left, bottom, right)


def read_levels(path: str) -> Levels:
    """The arrays of a zarr array or OME-Zarr group at `path`, every multiscales field checked (the module
    docstring), with their axes, scales, names and transforms."""
    import zarr

    # zarr raises many types for stores it cannot open (metadata, codecs, layout)
    with translated(InputError, f"{path}: cannot open it as a zarr array or group (", end=")", named=True):
        node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return Levels([node], _guess_axes(node.shape, path), [None], [path], [None])
    field, first = _multiscale(node, path)
    axes, units = _axes(first, field, path)
    datasets = first.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise InputError(f"{path}: {field}.datasets must be a non-empty list of objects; got {_shown(datasets)}")
    arrays, scales, names, transforms = [], [], [], []
    for i, dataset in enumerate(datasets):
        where = f"{field}.datasets[{i}]"
        array = _dataset(node, path, dataset, where)
        axes = axes or _guess_axes(array.shape, f"{path} ({where})")
        if len(array.shape) != len(axes):
            raise InputError(f"{path}: {where} is an array of shape {tuple(array.shape)}, not one dimension per "
                             f"axis of {field}.axes ({axes!r})")
        scale = _scale(dataset, where, len(axes), path)
        scales.append(_pixel_size(scale, axes, units))
        transforms.append((scale, _scale(dataset, where, len(axes), path, kind="translation")))
        arrays.append(array)
        names.append(f"{path} ({where})")
    overall = tuple(_scale(first, field, len(axes), path, kind=kind) for kind in ("scale", "translation"))
    unit, placed = _placed(transforms, overall, axes, units)
    return Levels(arrays, axes, scales, names, placed, unit)


def _placed(transforms: list, overall: tuple, axes: str, units: list) -> tuple[str | None, list]:
    """(unit, per level ((scale y, x), (translation y, x)) or None): each dataset's scale and translation, then
    the multiscale's, for the Y and X axes; in micrometres where both units convert, else as written."""
    y, x = axes.index("Y"), axes.index("X")
    unit_y, unit_x = (units[y], units[x]) if units else (None, None)
    if unit_y in UNITS_UM and unit_x in UNITS_UM:
        unit, factor = "micrometer", (UNITS_UM[unit_y], UNITS_UM[unit_x])
    else:
        unit, factor = unit_y if unit_y == unit_x else None, (1.0, 1.0)
    outer_scale, outer_shift = overall
    placed = []
    for scale, shift in transforms:
        if scale is None:
            placed.append(None)
            continue
        scales, shifts = [], []
        for a, f in zip((y, x), factor, strict=True):
            times = outer_scale[a] if outer_scale else 1.0
            scales.append(float(scale[a] * times * f))
            shifts.append(float(((shift[a] if shift else 0.0) * times + (outer_shift[a] if outer_shift else 0.0)) * f))
        placed.append((tuple(scales), tuple(shifts)))
    return unit, placed


def _multiscale(node: Any, path: str) -> tuple[str, dict]:
    """(field name, the first multiscale image) of the group's OME metadata, zarr v2 (0.4) or v3 (0.5) style."""
    attrs = node.attrs.asdict()
    ome = attrs.get("ome")
    if "multiscales" in attrs:
        field, found = "multiscales", attrs["multiscales"]
    elif isinstance(ome, dict) and "multiscales" in ome:
        field, found = "ome.multiscales", ome["multiscales"]
    elif ome is not None and not isinstance(ome, dict):
        raise InputError(f"{path}: its `ome` metadata must be an object; got {_shown(ome)}")
    else:
        names = sorted(name for name, _ in node.arrays())
        raise InputError(f"{path} is a zarr group without OME multiscales metadata; name one of its arrays "
                         f"({', '.join(names) or 'it has none'}) as {path}/ARRAY")
    if not isinstance(found, list) or not found or not isinstance(found[0], dict):
        raise InputError(f"{path}: {field} must be a non-empty list of objects; got {_shown(found)}")
    return f"{field}[0]", found[0]


def _axes(first: dict, field: str, path: str) -> tuple[str, list[str | None]]:
    """(one upper-case letter per axis, unit per axis or None); ("", []) when the metadata names no axes."""
    if "axes" not in first:
        return "", []
    axes = first["axes"]
    if not isinstance(axes, list) or not axes:
        raise InputError(f"{path}: {field}.axes must be a non-empty list of axis names or objects; got "
                         f"{_shown(axes)}")
    letters, units = [], []
    for i, axis in enumerate(axes):
        name, unit = (axis, None) if isinstance(axis, str) else \
            (axis.get("name"), axis.get("unit")) if isinstance(axis, dict) else (None, None)
        if not isinstance(name, str) or not name:
            raise InputError(f"{path}: {field}.axes[{i}] must be a name or an object with a text `name`; got "
                             f"{_shown(axis)}")
        if unit is not None and not isinstance(unit, str):
            raise InputError(f"{path}: {field}.axes[{i}].unit must be text; got {_shown(unit)}")
        letters.append(name[0].upper())
        units.append(unit)
    if len(set(letters)) != len(letters):
        raise InputError(f"{path}: {field}.axes {_shown([a if isinstance(a, str) else a['name'] for a in axes])}"
                         " do not each start with another letter (fc2conv knows axes by their first letter)")
    return "".join(letters), units


def _dataset(node: Any, path: str, dataset: Any, where: str) -> Any:
    """The array `dataset` names, once its `path` is known to stay inside the store."""
    import zarr

    if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str):
        raise InputError(f"{path}: {where}.path is missing: each dataset is an object whose `path` names an "
                         f"array in the store; got {_shown(dataset)}")
    name = dataset["path"]
    _check_inside(path, name, f"{where}.path")
    # zarr raises KeyError for a missing node, and many types for bad metadata below it
    with translated(InputError, f"{path}: {where}.path {name!r} names no array zarr can open (", end=")",
                    named=True):
        array = node[name]
    if not isinstance(array, zarr.Array):
        raise InputError(f"{path}: {where}.path {name!r} names a group, not an array")
    return array


def _check_inside(store: str, name: str, field: str) -> None:
    """`InputError` naming `field` unless `name` is a relative path of names that, with every file and folder
    below it, resolves inside `store` after following symbolic links."""
    parts = name.split("/")
    if name.startswith(("/", "\\")) or any(part in ("", ".", "..") for part in parts):
        raise InputError(f"{store}: {field} {name!r} is not a path inside the store (no '..', '.', empty or "
                         "absolute parts); fc2conv reads nothing outside the store it is given")
    check_contained(store, os.path.join(os.path.realpath(store), *parts), f"{field} {name!r}")


def check_contained(store: str | os.PathLike, start: str | os.PathLike, what: str, *, regular: bool = False) -> None:
    """`InputError` naming `what` unless `start` and every entry below it resolve inside `store` after following
    symbolic links (zarr would read through them; links to folders are checked, not descended into). With `regular`,
    every entry must also be a folder or a regular file: no pipe, socket or device, no dangling link."""
    root = os.path.realpath(store)
    entries = [str(start)] + [os.path.join(folder, name) for folder, folders, files in os.walk(start)
                              for name in folders + files]
    for entry in entries:
        resolved = os.path.realpath(entry)
        shown = repr(os.path.relpath(entry, root))  # names in a store can hold anything, line breaks too
        if os.path.commonpath([root, resolved]) != root:
            raise InputError(f"{store}: {what} leads out of the store through a symbolic link ({shown} → "
                             f"{resolved!r}); fc2conv reads nothing outside the store it is given")
        if not regular:
            continue
        try:
            mode = os.stat(entry).st_mode
        except OSError as e:  # a dangling link, or one in a loop
            raise InputError(f"{store}: {shown} cannot be read ({first_line(e)})") from None
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise InputError(f"{store}: {shown} is neither a folder nor a regular file (a pipe, socket or "
                             "device); a scan's store holds only folders and files")


def _scale(dataset: dict, where: str, dimensions: int, path: str, kind: str = "scale") -> list[float] | None:
    """The dataset's (or multiscale's) `scale` transformation (one positive number per axis), or with `kind`
    "translation" its `translation` (one finite number per axis); None when it has none."""
    transforms = dataset.get("coordinateTransformations", [])
    if not isinstance(transforms, list):
        raise InputError(f"{path}: {where}.coordinateTransformations must be a list; got {_shown(transforms)}")
    for j, transform in enumerate(transforms):
        if not isinstance(transform, dict):
            raise InputError(f"{path}: {where}.coordinateTransformations[{j}] must be an object; got "
                             f"{_shown(transform)}")
        if transform.get("type") != kind or kind not in transform:
            continue  # another transformation, or one kept in a file of its own
        values = transform[kind]
        good = _positive_number if kind == "scale" else _finite_number
        if not isinstance(values, list) or len(values) != dimensions or not all(good(v) for v in values):
            what = "positive" if kind == "scale" else "finite"
            raise InputError(f"{path}: {where}.coordinateTransformations[{j}].{kind} must list {dimensions} "
                             f"{what} numbers, one per axis; got {_shown(values)}")
        return values
    return None


def _pixel_size(scale: list[float] | None, axes: str, units: list[str | None]) -> tuple[float, float] | None:
    """Micrometres per pixel (y, x) from a dataset's scale, when the Y and X axes have units fc2conv knows."""
    if scale is None or "Y" not in axes or "X" not in axes or not units:
        return None
    y, x = axes.index("Y"), axes.index("X")
    if units[y] not in UNITS_UM or units[x] not in UNITS_UM:
        return None
    return scale[y] * UNITS_UM[units[y]], scale[x] * UNITS_UM[units[x]]


def _positive_number(value: Any) -> bool:
    return _finite_number(value) and value > 0


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any, limit: int = 60) -> str:
    """`value` as JSON-like text, cut short: metadata can hold anything, and messages stay a line or two."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _guess_axes(shape: tuple[int, ...], path: str) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[2] <= 4:
        return "YXS"
    if len(shape) == 3 and shape[0] <= 4:
        return "SYX"
    raise InputError(f"{path}: a zarr array of shape {tuple(shape)} is not an image (Y×X, Y×X×C or C×Y×X "
                     "with at most 4 channels); write OME-Zarr metadata to name its axes")
