"""Save converted models to disk and load them back, without pickle.

    save(dense, "out/model.pt2", recipe=recipe)            # torch.export program, dynamic N, H, W
    save(dense, "out/model.safetensors", recipe=recipe)    # converted weights + the recipe to rebuild them
    dense = load("out/model.safetensors")                  # fc2conv.convert(recipe.build()) + those weights
    program = torch.export.load("out/model.pt2")           # needs neither fc2conv nor pickle

Formats, chosen by the file name:
- ``.pt2``: `torch.export` program of the converted model with dynamic batch and spatial sizes (height and
  width, or length, or depth, height and width; each at least the reference size). Before it is written, the
  program is run at the reference size and at a larger one and must equal the converted model within
  `fc2conv.conversion.verification.tolerance`. The recipe and the
  geometry are stored as the archive's extra file ``fc2conv.json``.
- ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin``: the converted model's state dict, with the recipe as
  metadata (``fc2conv.recipe``). `load` rebuilds the architecture from the recipe, converts it and loads the
  weights strictly (every key and shape must match).
All files are written atomically and never replace an existing file unless ``force=True``.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..compat import size_oblivious_export
from ..conversion.geometry import Geometry, geometry
from ..conversion.verification import max_errors, tolerance
from ..errors import ConversionError, InputError, first_line, reported, translated
from ..metadata import ONE_CELL, axis_names
from ..runtime.files.atomic import refuse_existing
from ..shapes import map_size
from .checkpoint import TORCH_SUFFIXES, atomic_output, load_into, load_state_dict, read_metadata, save_state_dict
from .recipe import Recipe
from .unpickling import load_program

__all__ = ["EXPORT_SUFFIX", "STATE_SUFFIXES", "ExportedModule", "dynamic_dims", "export_program", "load", "read_recipe",
           "save"]

EXPORT_SUFFIX = ".pt2"
EXTRA_FILE = "fc2conv.json"
RECIPE_KEY = "fc2conv.recipe"
STATE_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)


def _example_input(converted: nn.Module) -> torch.Tensor:
    """A batch of 2 two strides larger than the reference, so no dimension of the example is 0 or 1."""
    info = converted.fc2conv
    reference = map_size(converted.fc2conv.input_shape)
    grid = None if info.mode in ONE_CELL else _geometry(converted)
    step = (8,) * len(reference) if grid is None else grid.stride
    size = tuple(r + 2 * s for r, s in zip(reference, step, strict=True))
    dtype = next(converted.parameters()).dtype
    return torch.randn(2, info.input_shape[0], *(size if grid is None else grid.taken(size)),
                       generator=torch.Generator().manual_seed(0), dtype=dtype)


def _geometry(converted: nn.Module) -> Geometry | None:
    """The geometry, or None for a model that has none (`fc2conv.geometry` refuses it): it is saved all the same,
    as the function it is; exporting it to ONNX, running and scanning it are refused."""
    try:
        return geometry(converted)
    except ConversionError:
        return None


def dynamic_dims(reference: tuple[int, ...]) -> dict[int, torch.export.Dim]:
    """torch.export's dynamic dimensions of an N×C×(spatial) input: the batch, and each spatial axis from its
    reference size up."""
    names = axis_names(len(reference))
    return {0: torch.export.Dim("batch"),
            **{2 + a: torch.export.Dim(name, min=size) for a, (name, size) in enumerate(zip(names, reference,
                                                                                             strict=True))}}


def export_program(converted: nn.Module) -> torch.export.ExportedProgram:
    """The `torch.export` program of `converted`, dynamic in batch and in every spatial size ≥ the reference.

    Raises `ConversionError` if the export fails or if the program differs from `converted` (beyond the
    tolerance of its dtype) at the reference size or at a larger one.
    """
    if getattr(converted, "fc2conv", None) is None:
        raise InputError("export_program needs a model returned by fc2conv.convert")
    reference = map_size(converted.fc2conv.input_shape)
    name = next(iter(inspect.signature(converted.forward).parameters))
    dims = dynamic_dims(reference)
    example = _example_input(converted)
    with translated(ConversionError, "torch.export failed on the converted model: ", named=True), \
            size_oblivious_export():
        program = torch.export.export(converted, (example,), dynamic_shapes={name: dims})
    reference = example[(slice(0, 1), slice(None), *(slice(0, r) for r in reference))]
    for x in (reference, example):
        with torch.no_grad():
            expected, actual = converted(x), program.module()(x)
        _, max_rel = max_errors(actual, expected)
        if max_rel > tolerance(expected.dtype):
            raise ConversionError(f"the exported program differs from the converted model on a "
                                  f"{tuple(x.shape)} input (max rel error {max_rel:.1e}); not saved")
    return program


def _description(converted: nn.Module, recipe: Recipe) -> dict:
    info = converted.fc2conv
    described = {"recipe": json.loads(recipe.to_json()), "input_shape": list(info.input_shape), "mode": info.mode}
    if info.mode not in ONE_CELL:
        grid = _geometry(converted)
        described["geometry"] = grid and grid.to_dict()
    return described


@reported("saving the artifact")
def save(converted: nn.Module, path: str | os.PathLike, *, recipe: Recipe, force: bool = False) -> Path:
    """Write `converted` (from `fc2conv.convert`, made as `recipe` says) to `path`; returns the path.

    The format follows the suffix (see the module docstring). Raises `InputError` for an unknown suffix,
    an existing file without `force`, a directory that cannot be written, or a failed export check.
    """
    path = Path(path)
    info = getattr(converted, "fc2conv", None)
    if info is None:
        raise InputError("save needs a model returned by fc2conv.convert")
    if (tuple(recipe.input_shape), recipe.mode) != (tuple(info.input_shape), info.mode):
        raise InputError(f"the recipe ({recipe.input_shape}, {recipe.mode}) does not describe this model "
                         f"({info.input_shape}, {info.mode})")
    described = _description(converted, recipe)
    if path.suffix == EXPORT_SUFFIX:
        refuse_existing(path, force=force)  # before the export, which takes a while
        program = export_program(converted)
        buffer = io.BytesIO()  # torch's C++ zip writer aborts the process when the disk is full: write in Python
        torch.export.save(program, buffer, extra_files={EXTRA_FILE: json.dumps(described)})
        with atomic_output(path, force=force) as tmp:
            tmp.write_bytes(buffer.getbuffer())
    elif path.suffix in STATE_SUFFIXES:
        metadata = {RECIPE_KEY: recipe.to_json(), "fc2conv": json.dumps(described)}
        save_state_dict(converted.state_dict(), path, force=force, metadata=metadata)
    else:
        raise InputError(f"{path}: unknown output format; name it {EXPORT_SUFFIX} (torch.export), "
                         f".safetensors or .pt (weights + recipe)")
    return path


def read_recipe(path: str | os.PathLike) -> Recipe:
    """The recipe saved in an artifact written by `save` (never unpickles code)."""
    path = Path(path)
    if path.suffix == EXPORT_SUFFIX:
        text = json.loads(_read_extra(path)).get("recipe")
        return Recipe.from_json(json.dumps(text), source=str(path))
    text = read_metadata(path).get(RECIPE_KEY)
    if text is None:
        raise InputError(f"{path} holds no fc2conv recipe: it is not an artifact written by "
                         "`fc2conv convert` (for an original checkpoint give --arch or --model-def)")
    return Recipe.from_json(text, source=str(path))


def _read_extra(path: Path) -> str:
    """fc2conv's JSON from a `.pt2` archive, read as text: no program is loaded, nothing is unpickled."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{EXTRA_FILE}")), None)
            text = archive.read(name).decode() if name else ""
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not a readable torch.export program ({first_line(e)})") from None
    if not text:
        raise InputError(f"{path} is a torch.export program without fc2conv's {EXTRA_FILE}; it was not "
                         "written by fc2conv")
    return text


class ExportedModule(nn.Module):
    """A loaded `.pt2` program as a module; `eval()` and `train()` leave it alone (it was exported in eval mode).

    `.fc2conv` is set when the caller knows the conversion (as `fc2conv verify` does), so `verify` accepts it.
    """

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        # Kept out of the module tree: an exported module refuses eval() and train().
        self.__dict__["program"] = program.module()

    def train(self, mode: bool = True) -> ExportedModule:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


@reported("loading the artifact")
def load(path: str | os.PathLike, *, model_def: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """The converted model saved at `path` by `save`.

    ``.pt2``: an `ExportedModule` running the exported program. State-dict artifacts: the recipe's
    architecture, converted with the recorded options, holding the saved weights (a `fx.GraphModule` with
    `.fc2conv`, like `fc2conv.convert` returns). An artifact made from a model definition file needs
    ``model_def="FILE.py:FACTORY"`` to be passed explicitly: loading a file never runs code on its own. No
    pickle in the file runs either: a `.pt2` whose archive holds one that needs more than tensors is refused,
    naming the entry, unless `trust_pickle` (see `fc2conv.storage.unpickling`).
    """
    path = Path(path)
    if path.suffix == EXPORT_SUFFIX:
        return ExportedModule(load_program(path, trust_pickle=trust_pickle))
    recipe = read_recipe(path)
    if recipe.model_def is not None:
        if model_def is None:
            raise InputError(
                f"{path} was converted from the model definition {recipe.model_def}; running it executes that "
                f"file's code, so pass it explicitly: --model-def / model_def={recipe.model_def!r}"
            )
        recipe = Recipe(**{**json.loads(recipe.to_json()), "model_def": model_def})
    converted = recipe.convert(recipe.build())
    load_into(converted, load_state_dict(path, trust_pickle=trust_pickle), source=str(path))
    return converted
