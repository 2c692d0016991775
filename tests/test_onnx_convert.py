"""`convert_onnx`: ONNX classifiers in, fully convolutional ONNX out, without PyTorch.

Sources are files written by `torch.onnx.export` with both exporters of torch 2.14 (TorchScript: Flatten or
Reshape → Gemm, GlobalAveragePool; dynamo: Reshape → Gemm, ReduceMean), and hand-built graphs for the
MatMul + Add spelling, a global pool under symbolic input dims, and a pattern fc2conv must refuse; files that are
garbage, unsupported or that onnxruntime cannot load are refused and nothing is written.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_close, assert_onnx_overwrite_needs_force, build_torchvision, randn
from onnx import TensorProto, helper, numpy_helper
from onnx_helpers import op_counts, run_onnx, run_without_torch

import fc2conv
from fc2conv.errors import ConversionError
from fc2conv.onnx import convert_onnx
from models.small_cnn import SmallCNN, small_cnn

# The dynamo exporter is slow (15-50 s a model on 2 cores), so one model covers its spelling
# (ReduceMean → Reshape → Gemm); the TorchScript files cover Flatten, Reshape, chained Gemms, SE blocks, and
# (with dynamic axes) ShuffleNet's channel shuffle, whose shapes ONNX shape inference cannot derive.
SOURCES = [("torchscript", "small_cnn"), ("torchscript", "resnet18"), ("torchscript", "mobilenet_v3_small"),
           ("torchscript-dynamic", "shufflenet_v2_x0_5"), ("dynamo", "resnet18")]


def _source_model(name: str) -> tuple[torch.nn.Module, int]:
    if name == "small_cnn":
        torch.manual_seed(0)
        return small_cnn().eval(), 32
    return build_torchvision(name), 224


@pytest.fixture(scope="module", params=SOURCES, ids=[f"{e}-{n}" for e, n in SOURCES])
def source(request, tmp_path_factory):
    """(exporter, PyTorch model, reference size, path of the ONNX file torch.onnx.export wrote)."""
    exporter, name = request.param
    model, size = _source_model(name)
    path = tmp_path_factory.mktemp("src") / f"{exporter}_{name}.onnx"
    x = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), dynamo=True, verbose=False).save(path)
        else:
            axes = {"x": {0: "n", 2: "h", 3: "w"}} if exporter.endswith("dynamic") else None
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes=axes)
    return exporter, model, size, path


def test_torch_onnx_files(source, tmp_path):
    _, model, size, path = source
    before = op_counts(path)
    assert before["Gemm"] > 0  # both exporters write a Linear as Gemm here
    out = tmp_path / "dense.onnx"
    converted = convert_onnx(path, out, (3, size, size))
    onnx.checker.check_model(str(out), full_check=True)
    after = op_counts(out)
    assert after["Gemm"] == after["MatMul"] == 0
    assert after["Conv"] == before["Conv"] + before["Gemm"]
    dims = [d.dim_param or d.dim_value for d in converted.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    x = randn(1, 3, size, size)
    assert_close(run_onnx(out, x).flatten(1), run_onnx(path, x))
    # On a larger image: the same map as fc2conv.convert gives in PyTorch.
    larger = randn(2, 3, size + 64, size + 32, seed=1)
    with torch.no_grad():
        expected = fc2conv.convert(model, (3, size, size))(larger)
    actual = run_onnx(out, larger)
    assert actual.shape == expected.shape and actual.shape[2:] > (1, 1)
    assert_close(actual, expected)


def _const(graph_inits: list, name: str, array: np.ndarray) -> str:
    graph_inits.append(numpy_helper.from_array(array.astype(np.float32), name))
    return name


def _handmade(kind: str) -> onnx.ModelProto:
    """Conv features and a fully connected head, spelled as `kind`:
    "matmul": Flatten → MatMul + Add → Relu → MatMul + Add, static 8×8 input;
    "gap": GlobalAveragePool → Flatten → Gemm(transB=1), symbolic height and width;
    "argmax": Flatten → Gemm → ArgMax over the classes (cannot work on a score map)."""
    rng = np.random.default_rng(0)
    inits: list = []
    nodes = [helper.make_node("Conv", ["x", _const(inits, "w0", rng.standard_normal((4, 2, 3, 3))),
                                       _const(inits, "b0", rng.standard_normal(4))], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu")]
    if kind == "gap":
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
                  helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
                  helper.make_node("Gemm", ["f", _const(inits, "w1", rng.standard_normal((5, 4))),
                                            _const(inits, "b1", rng.standard_normal(5))], ["y"], transB=1, name="fc")]
    else:
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], name="flatten"))
    if kind == "matmul":
        nodes += [helper.make_node("MatMul", ["f", _const(inits, "w1", rng.standard_normal((144, 16)) / 12)], ["m1"],
                                   name="fc1"),
                  helper.make_node("Add", ["m1", _const(inits, "b1", rng.standard_normal(16))], ["a1"], name="add1"),
                  helper.make_node("Relu", ["a1"], ["h"], name="relu1"),
                  helper.make_node("MatMul", ["h", _const(inits, "w2", rng.standard_normal((16, 5)))], ["m2"],
                                   name="fc2"),
                  helper.make_node("Add", [_const(inits, "b2", rng.standard_normal(5)), "m2"], ["y"], name="add2")]
    if kind == "argmax":
        nodes += [helper.make_node("Gemm", ["f", _const(inits, "w1", rng.standard_normal((144, 5)))], ["s"],
                                   name="fc"),
                  helper.make_node("ArgMax", ["s"], ["y"], axis=1, keepdims=1, name="best")]
    height_width = ["H", "W"] if kind == "gap" else [8, 8]
    out_type = TensorProto.INT64 if kind == "argmax" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, *height_width])]
    graph = helper.make_graph(nodes, kind, inputs, [helper.make_tensor_value_info("y", out_type, ["N", None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_matmul_add_head(tmp_path):
    src, out = tmp_path / "src.onnx", tmp_path / "dense.onnx"
    onnx.save(_handmade("matmul"), src)
    convert_onnx(src, out)
    ops = op_counts(out)
    assert ops["MatMul"] == ops["Add"] == 0 and ops["Conv"] == 3
    x = randn(2, 2, 8, 8)
    assert_close(run_onnx(out, x).flatten(1), run_onnx(src, x))
    # Each cell of a larger map is the original on that 8×8 window (no padding, stride 1).
    big = randn(1, 2, 11, 9, seed=1)
    dense = run_onnx(out, big)
    assert dense.shape == (1, 5, 4, 2)
    for i, j in [(0, 0), (3, 1), (2, 0)]:
        assert_close(dense[0, :, i, j], run_onnx(src, big[:, :, i : i + 8, j : j + 8].contiguous())[0])


@pytest.mark.parametrize("mode", ["dense", "global"])
def test_global_pool_modes(tmp_path, mode):
    src, out = tmp_path / "src.onnx", tmp_path / f"{mode}.onnx"
    onnx.save(_handmade("gap"), src)
    with pytest.raises(ConversionError, match=r"symbolic dims .*pass input_shape"):
        convert_onnx(src, out)
    convert_onnx(src, out, (2, 8, 8), mode=mode)
    ops = op_counts(out)
    assert ops["Gemm"] == 0 and ops["Conv"] == 2
    assert ops["AveragePool" if mode == "dense" else "GlobalAveragePool"] == 1
    x, big = randn(2, 2, 8, 8), randn(2, 2, 12, 10, seed=1)
    assert_close(run_onnx(out, x).flatten(1), run_onnx(src, x))
    if mode == "global":  # the same function at every size
        assert_close(run_onnx(out, big).flatten(1), run_onnx(src, big))
    else:  # one cell per 8×8 window of the input (the 3×3 conv has no padding)
        dense = run_onnx(out, big)
        assert dense.shape == (2, 5, 5, 3)
        assert_close(dense[:, :, 4, 2], run_onnx(src, big[:, :, 4:12, 2:10].contiguous()))


def test_unsupported_pattern_writes_nothing(tmp_path):
    src, out = tmp_path / "src.onnx", tmp_path / "dense.onnx"
    onnx.save(_handmade("argmax"), src)
    with pytest.raises(ConversionError, match=r"ArgMax node 'best': fc2conv cannot keep ArgMax working on 's'"):
        convert_onnx(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]


class PoolsOfTwoMaps(torch.nn.Module):
    """A Linear on an average pool of the features and a max pool of an earlier, larger map."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3, stride=2)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        early = self.conv1(x)
        return self.fc(torch.cat([self.conv2(early).mean((2, 3)), early.amax((2, 3))], 1))


def test_onnx_pools_of_two_maps_are_refused(tmp_path):
    """Their windows would slide on different grids (pools of one map convert: test_onnx_export.py)."""
    src, out = tmp_path / "src.onnx", tmp_path / "dense.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(PoolsOfTwoMaps().eval(), (torch.zeros(1, 3, 15, 15),), src, dynamo=False,
                          input_names=["x"], opset_version=18)
    with pytest.raises(ConversionError, match=r"combined with a pool of another map .*different grids"):
        convert_onnx(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]
    assert op_counts(convert_onnx(src, mode="global"))["Gemm"] == 0  # global pools stay: nothing slides


def test_bad_files_and_arguments(tmp_path):
    src, out = tmp_path / "src.onnx", tmp_path / "dense.onnx"
    onnx.save(_handmade("matmul"), src)
    with pytest.raises(ConversionError, match="mode must be one of"):
        convert_onnx(src, out, mode="cam")
    with pytest.raises(ConversionError, match=r"input_shape=\(3, 8, 8\) does not fit input 'x'"):
        convert_onnx(src, out, (3, 8, 8))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all")
    with pytest.raises(ConversionError, match=r"garbage\.onnx: not a"):
        convert_onnx(garbage, out)
    assert_onnx_overwrite_needs_force(lambda force: convert_onnx(src, out, force=force), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.onnx", "garbage.onnx", "src.onnx"]


def test_without_torch(tmp_path):
    onnx.save(_handmade("matmul"), tmp_path / "src.onnx")
    done = run_without_torch("""
        import sys
        import fc2conv.onnx
        from fc2conv.onnx import convert_onnx
        convert_onnx("src.onnx", "dense.onnx")
        assert not any(m.split(".")[0] == "torch" for m in sys.modules), "torch was imported"
        try:
            fc2conv.onnx.export_onnx
        except ImportError:
            print("export_onnx needs torch")
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "export_onnx needs torch"
    assert op_counts(tmp_path / "dense.onnx")["MatMul"] == 0


class _StaticShuffle(torch.nn.Module):
    """A channel shuffle whose Reshape the TorchScript exporter writes with the export's sizes as constants."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.mean((2, 3)))


def test_a_static_file_with_sizes_baked_in_is_refused(tmp_path):
    """Exported without dynamic axes, the shuffle's Reshape holds 16×16: the rewritten model would run at that
    size only, so convert_onnx refuses it (its own run at a larger size fails) and writes nothing."""
    source = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_StaticShuffle().eval(), (torch.zeros(1, 3, 16, 16),), source, dynamo=False)
    with pytest.raises(ConversionError, match=r"static\.onnx: .*(stays|baked|fails in onnxruntime)"):
        convert_onnx(source, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["static.onnx"]


def test_an_onnx_file_that_is_garbage_or_unsupported_writes_nothing(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + os.urandom(256))
    out = tmp_path / "out.onnx"
    with pytest.raises(ConversionError, match=r"garbage\.onnx"):
        convert_onnx(garbage, out)
    # The head's vector scaled by the mean of the whole input: a second branch no map of scores can keep.
    rng = torch.Generator().manual_seed(0)
    init = [numpy_helper.from_array(torch.randn(4, 3, 3, 3, generator=rng).numpy(), "conv_w"),
            numpy_helper.from_array(torch.randn(5, 4, generator=rng).numpy(), "fc_w"),
            numpy_helper.from_array(torch.randn(5, generator=rng).numpy(), "fc_b"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")]
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["f"]),
             helper.make_node("GlobalAveragePool", ["f"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["vector"]),
             helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Unsqueeze", ["mean", "axis"], ["scale"]),
             helper.make_node("Mul", ["vector", "scale"], ["scaled"]),
             helper.make_node("Gemm", ["scaled", "fc_w", "fc_b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "two_branches", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              [1, 3, 10, 10])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = tmp_path / "two_branches.onnx"
    onnx.save(model, source)
    before = source.read_bytes()
    with pytest.raises(ConversionError, match=r"two_branches\.onnx: .*Mul.*comes from another branch"):
        convert_onnx(source, out)
    assert not out.exists() and source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx", "two_branches.onnx"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, chosen for this source
def test_an_onnx_file_onnxruntime_cannot_load_is_not_converted(tmp_path):
    torch.manual_seed(0)
    source = tmp_path / "small.onnx"
    torch.onnx.export(SmallCNN().eval(), (torch.zeros(1, 3, 32, 32),), source, dynamo=False)
    model = onnx.load(source)
    model.opset_import[0].version = 99
    onnx.save(model, tmp_path / "future.onnx")
    with pytest.raises(ConversionError, match=r"future\.onnx: onnxruntime cannot load it .*does not convert what "):
        convert_onnx(tmp_path / "future.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
