"""Shared helpers for the scan tests: exported models, test images and slides, and how many tiles a store marks
done."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

import fc2conv
from fc2conv.runtime import DenseModel
from models.digits_cnn import DigitsCNN
from models.digits_data import LABELS
from models.small_cnn import small_cnn

ROOT = Path(__file__).resolve().parents[1]
# Models and the reference input each is converted at: padding-free (digits), padded (the rest).
SHAPES = {"digits": (1, 32, 32), "small": (3, 32, 32), "resnet18": (3, 64, 64), "vgg11": (3, 64, 64),
          "densenet121": (3, 64, 64), "mobilenet_v3_small": (3, 64, 64)}


def export(name: str, directory: Path) -> Path:
    """`name` converted and exported to `directory/name.onnx`: the trained digits CNN, or random weights."""
    path = directory / f"{name}.onnx"
    if path.exists():
        return path
    torch.manual_seed(0)
    if name == "digits":
        from safetensors.torch import load_file

        model = DigitsCNN()
        model.load_state_dict(load_file(ROOT / "models" / "digits_cnn.safetensors"))
    else:
        model = small_cnn() if name == "small" else torchvision.models.get_model(name, weights=None)
    labels = LABELS if name == "digits" else None
    fc2conv.export_onnx(fc2conv.convert(model.eval(), SHAPES[name]), path, labels=labels)
    return path


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A uint8 image of random samples: every cell differs from its neighbours, so a wrong halo shows."""
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_tiff(path: Path, image: np.ndarray, *, levels: int = 1, tile: int = 64, subifds: bool = True,
               resolution_um: float | None = None) -> Path:
    """A tiled TIFF of `image` (BigTIFF), with `levels` − 1 halvings as SubIFDs or as reduced pages after it."""
    import tifffile

    options = {"tile": (tile, tile), "compression": "zlib", "metadata": None,
               "photometric": "rgb" if image.ndim == 3 else "minisblack"}
    if resolution_um is not None:
        options.update(resolution=(1e4 / resolution_um, 1e4 / resolution_um), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(image, subifds=levels - 1 if subifds else None, **options)
        options.pop("resolution", None)
        options.pop("resolutionunit", None)
        for level in range(1, levels):
            tif.write(image[:: 2**level, :: 2**level], subfiletype=1, **options)
    return path


def forge_tags(path: Path, **values: int) -> Path:
    """Overwrite numeric tags of the TIFF's first page in place (ImageWidth=2_000_000, TileWidth=…): a header that
    lies about the data after it. Each tag keeps its type, so the value must fit it (tifffile writes sizes as
    LONG)."""
    import struct

    import tifffile

    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for name, value in values.items():
            tag = tif.pages[0].tags[name]
            struct.pack_into(tif.byteorder + {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)], data, tag.valueoffset, value)
    path.write_bytes(bytes(data))
    return path


def one_pass(model: Path, image: np.ndarray) -> np.ndarray:
    return DenseModel(model).run(image).scores


def done_tiles(store: Path) -> int:
    """How many tiles a scan store marks done."""
    chunks = store / "done" / "c"
    return sum(1 for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else 0
