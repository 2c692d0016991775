"""Errors named for what failed: the torch-free wing's refusals name the Python keyword (`tile=`, `resume=True`),
and the command shows the same refusal naming its flag (`--tile`, `--resume`), translated by `fc2conv.cli.keywords`
from one table per command."""

from __future__ import annotations

import pytest
from helpers import assert_clean_refusal, invoke

from fc2conv.cli.keywords import QUANTIZE, RECIPE, SCAN, VIEW, as_flags
from fc2conv.errors import InputError, ScanError

# --- the translator -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "shown"), [
    ("tile= must be a positive number of pixels; got 0", "--tile must be a positive number of pixels; got 0"),
    ("give level= or mpp=, not both", "give --level or --mpp, not both"),
    ("mask='auto' found no foreground", "--mask auto found no foreground"),
    ("pass resume=True to continue it or force=True to start again",
     "pass --resume to continue it or --force to start again"),
    ("mask=/data/a b.geojson: none of its 3 polygons", "--mask /data/a b.geojson: none of its 3 polygons"),
    ("tile=64 is smaller than the window; ome_tiff=m.tif", "--tile 64 is smaller than the window; --ome-tiff m.tif"),
    ("a.tif already exists; pass --force (force=True) to overwrite it", "a.tif already exists; pass --force to "
                                                                          "overwrite it"),
    ("retile= and mask_path= and max_tile=3 are not keywords of scan", "retile= and mask_path= and max_tile=3 are "
                                                                        "not keywords of scan"),
    ("/tmp/tile=3/in.tif: tile==3 is no keyword either", "/tmp/tile=3/in.tif: tile==3 is no keyword either"),
    ("density= is Recipe's", "density= is Recipe's"),
])
def test_the_scan_table_turns_keywords_into_flags_and_nothing_else(message, shown):
    assert as_flags(message, SCAN) == shown


def test_each_command_has_its_own_flags():
    assert as_flags("float_layers='none' gives 90% (min_agreement=)", QUANTIZE) == "--float-layers none gives 90% " \
                                                                                    "(--min-agreement)"
    assert as_flags("region= takes 4 whole numbers; classes=: 'cat'", VIEW) == "--region takes 4 whole numbers; " \
                                                                               "--classes: 'cat'"
    assert as_flags("mode='dense' with density=; model_args= and model_kwargs= pass x", RECIPE) == \
        "--mode dense with --density; --model-arg passes x"
    assert as_flags("tile= and float_layers=", VIEW) == "tile= and float_layers="


# --- the same refusal from Python and from the command ---------------------------------------------------------------

def test_scan_names_the_keyword_and_the_command_the_flag(tmp_path):
    from fc2conv.runtime import scan

    (tmp_path / "model.onnx").write_bytes(b"checked later")  # the outputs are checked before the model is read
    (tmp_path / ".out.zarr.partial").mkdir()
    with pytest.raises(ScanError, match="pass resume=True to continue it or force=True to start again"):
        scan(tmp_path / "in.tif", model=tmp_path / "model.onnx", out=tmp_path / "out.zarr")
    with pytest.raises(InputError, match="context=8 widens the halo of an approximate=True scan"):
        scan(tmp_path / "in.tif", model=tmp_path / "model.onnx", out=tmp_path / "out.zarr", context=8)
    command = ["scan", tmp_path / "in.tif", "--model", tmp_path / "model.onnx", "--out", tmp_path / "out.zarr"]
    assert_clean_refusal(invoke(*command), "pass --resume to continue it or --force to start again")
    assert_clean_refusal(invoke(*command, "--context", 8), "--context 8 widens the halo of an --approximate scan",
                         "drop --context or pass --approximate")


def test_quantize_names_the_keyword_and_the_command_the_flag(tmp_path):
    from fc2conv.runtime import quantize

    model, calibration = tmp_path / "model.onnx", tmp_path / "calibration"
    with pytest.raises(InputError, match=r"float_layers= must be one of auto, .*; got 'some'"):
        quantize(model, tmp_path / "q.onnx", calibration, float_layers="some")
    done = invoke("quantize", model, "--calibration", calibration, "-o", tmp_path / "q.onnx", "--float-layers", "some")
    assert_clean_refusal(done, "--float-layers must be one of auto, ", "got 'some'")
    assert "float_layers=" not in done.stderr


def test_view_names_the_keyword_and_the_command_the_flag(tmp_path):
    from fc2conv.viewer import prepare

    with pytest.raises(InputError, match=r"region= takes 4 whole numbers of at least 0; got \(-1, 0, 10, 10\)"):
        prepare(tmp_path / "out.zarr", region=(-1, 0, 10, 10))
    done = invoke("view", tmp_path / "out.zarr", "--region", "-1,0,10,10")
    assert_clean_refusal(done, "--region takes 4 whole numbers of at least 0; got (-1, 0, 10, 10)")
