"""Images as their owner sees them, within a memory budget: a huge image is refused from its header before it is
decoded (`--max-pixels` is the budget), 16-bit PNGs keep their range, EXIF orientation is applied, and a truncated
image is one clean message.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
from helpers import assert_clean_refusal, invoke
from PIL import Image, ImageOps

from fc2conv.cli import EXIT_OK
from fc2conv.errors import ConversionError
from fc2conv.runtime import DenseModel
from fc2conv.runtime.images import load_image


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims `width`×`height` pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_huge_image_is_refused_from_its_header_before_decoding(small_and_gray_onnx, tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (9500, 9500)).save(big)  # 90 MP in ~88 KB, just above Pillow's warning limit
    assert big.stat().st_size < 200_000
    result = invoke("run", small_and_gray_onnx[0], big)
    assert_clean_refusal(result, "90,250,000 pixels", "--max-pixels", "fc2conv scan")
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30000, 30000)  # beyond Pillow's own error limit
    assert_clean_refusal(invoke("run", small_and_gray_onnx[0], bomb), "900,000,000 pixels", "fc2conv scan")
    with pytest.raises(ConversionError, match="max_pixels="):
        DenseModel(small_and_gray_onnx[0]).run(big)


def test_max_pixels_is_the_budget(small_and_gray_onnx, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    assert_clean_refusal(invoke("run", small_and_gray_onnx[0], path, "--max-pixels", "1999"), "2,000 pixels")
    assert invoke("run", small_and_gray_onnx[0], path, "--max-pixels", "2000").exit_code == EXIT_OK


def test_sixteen_bit_gray_png_keeps_its_range(small_and_gray_onnx, tmp_path):
    values = np.random.default_rng(0).integers(0, 65536, (20, 24), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(load_image(path, 1)[:, :, 0], values.astype(np.float32) / 65535)
    model = DenseModel(small_and_gray_onnx[1])
    np.testing.assert_allclose(model.run(path).scores, model.run(values.astype(np.float32) / 65535).scores,
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("planes", [3, 4])
def test_sixteen_bit_colour_png_is_read_exactly(tmp_path, planes):
    values = np.random.default_rng(planes).integers(0, 65536, (9, 11, planes), dtype=np.uint16)
    path = tmp_path / "colour16.png"
    png.Writer(11, 9, bitdepth=16, greyscale=False, alpha=planes == 4).write(
        path.open("wb"), values.reshape(9, -1).tolist())
    np.testing.assert_array_equal(load_image(path, 3), values[:, :, :3].astype(np.float32) / 65535)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    image.save(path, exif=exif, quality=100)
    with Image.open(path) as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened))
    np.testing.assert_array_equal(load_image(path, 3), upright.astype(np.float32) / 255)


def test_a_truncated_image_is_a_clean_error(small_and_gray_onnx, tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    assert_clean_refusal(invoke("run", small_and_gray_onnx[0], path), "cut.png", "cannot read it as an image")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_normalising_leaves_the_callers_array_as_it_was(small_and_gray_onnx, dtype):
    """The input is (samples in [0, 1] − mean) / std, as float32 operations give it, in a new contiguous array:
    normalising in place never touches the caller's image."""
    model = DenseModel(small_and_gray_onnx[0])
    model.metadata = {**model.metadata, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    rng = np.random.default_rng(0)
    image = (rng.random((20, 24, 3)) * (np.iinfo(dtype).max if dtype != np.float32 else 1)).astype(dtype)
    kept = image.copy()
    x = model.preprocess(image)
    np.testing.assert_array_equal(image, kept)
    unit = image.astype(np.float32) / (np.iinfo(dtype).max if dtype != np.float32 else 1)
    mean, std = (np.asarray(model.metadata[k], np.float32).reshape(-1, 1, 1) for k in ("mean", "std"))
    np.testing.assert_array_equal(x, ((unit.transpose(2, 0, 1) - mean) / std)[None])
    assert x.flags.c_contiguous and x.dtype == np.float32
