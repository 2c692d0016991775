"""The bundled default: the committed digits checkpoint, the demo's canvas and its found-vs-placed check."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import fc2conv
from fc2conv.storage.checkpoint import load_into, load_state_dict
from models.digits_cnn import DigitsCNN
from models.digits_data import LABELS, MARGIN, STRIDE, WINDOW, centred, load_split

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "digits_cnn.safetensors"
_spec = importlib.util.spec_from_file_location("digits_canvas", ROOT / "scripts" / "digits_canvas.py")
digits_canvas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_canvas)


@pytest.fixture(scope="module")
def trained_digits() -> DigitsCNN:
    net = DigitsCNN()
    load_into(net, load_state_dict(CHECKPOINT), source=str(CHECKPOINT))
    return net.eval()


def test_checkpoint_is_small_and_accurate_on_the_test_split(trained_digits):
    assert CHECKPOINT.stat().st_size < 500_000
    _, x_test, _, y_test = load_split()
    with torch.no_grad():
        predicted = trained_digits(torch.from_numpy(centred(x_test)).float().div(255).unsqueeze(1)).argmax(1).numpy()
    assert (predicted == y_test).mean() >= 0.97


def test_dense_cells_are_the_model_on_crops(trained_digits):
    """No padding: every cell of the converted map is exactly the classifier on its 32×32 crop."""
    dense = fc2conv.convert(trained_digits, (1, WINDOW, WINDOW))
    geo = fc2conv.geometry(dense)
    assert geo.stride == (STRIDE, STRIDE) and geo.window == (WINDOW, WINDOW)
    canvas = torch.rand(1, 1, 48, 60, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dense(canvas)
        for i, j in [(0, 0), (2, 3), (4, 7)]:
            top, left, bottom, right = geo.box(i, j)
            torch.testing.assert_close(out[0, :, i, j], trained_digits(canvas[:, :, top:bottom, left:right])[0],
                                       rtol=1e-5, atol=1e-5)


def best_cells(model, canvas: np.ndarray) -> dict:
    """What `fc2conv run --json` reports as top_classes, computed with the PyTorch model."""
    dense = fc2conv.convert(model, (1, WINDOW, WINDOW))
    with torch.no_grad():
        probabilities = dense(torch.from_numpy(canvas.copy()).float().div(255)[None, None]).softmax(1)[0]
    cols = probabilities.shape[2]
    top = []
    for k, label in enumerate(LABELS):
        i, j = divmod(int(probabilities[k].argmax()), cols)
        top.append({"label": label, "score": float(probabilities[k, i, j]),
                    "box": [STRIDE * i, STRIDE * j, STRIDE * i + WINDOW, STRIDE * j + WINDOW]})
    return {"top_classes": top}


def report(tmp_path, capsys, placed: list, run: dict) -> tuple[int, str]:
    (tmp_path / "placed.json").write_text(json.dumps(placed))
    (tmp_path / "run.json").write_text(json.dumps(run))
    code = digits_canvas.report_command(tmp_path / "placed.json", tmp_path / "run.json")
    return code, capsys.readouterr().out


def test_demo_canvas_digits_are_found_where_placed(trained_digits, tmp_path, capsys):
    from PIL import Image

    assert digits_canvas.compose_command(tmp_path / "canvas.png", tmp_path / "placed.json", 8, 1) == 0
    placed = json.loads((tmp_path / "placed.json").read_text())
    assert len({p["digit"] for p in placed}) == len(placed) == 8
    canvas = np.asarray(Image.open(tmp_path / "canvas.png"))
    code, out = report(tmp_path, capsys, placed, best_cells(trained_digits, canvas))
    assert code == 0, out
    assert "all 8 digits found within 4 pixels" in out


def test_report_fails_on_a_miss_and_on_a_false_alarm(tmp_path, capsys):
    def hit(label, top, left, score):
        return {"label": label, "score": score, "box": [top - MARGIN, left - MARGIN, top + 28, left + 28]}

    placed = [{"digit": 3, "top": 20, "left": 40}]
    assert report(tmp_path, capsys, placed, {"top_classes": [hit("3", 21, 42, 0.9)]})[0] == 0
    code, out = report(tmp_path, capsys, placed, {"top_classes": [hit("3", 20, 60, 0.99)]})
    assert code == 1 and "MISSED" in out
    code, out = report(tmp_path, capsys, placed, {"top_classes": [hit("3", 20, 40, 0.3)]})
    assert code == 1 and "MISSED" in out
    code, out = report(tmp_path, capsys, placed, {"top_classes": [hit("3", 20, 40, 0.9), hit("7", 80, 80, 0.6)]})
    assert code == 1 and "FALSE ALARM" in out


def drawn(text: str) -> tuple[list[str], list[str]]:
    """The two maps of `side_by_side`, as rows of characters: (coarse, fine)."""
    rows = [line.split("|") for line in text.splitlines() if line.lstrip()[:1].isdigit()]
    return [row[1] for row in rows], [row[3] for row in rows]


def test_side_by_side_draws_each_coarse_cell_over_the_windows_it_stands_for():
    """A stride-4 cell is drawn 4×4 on the stride-1 grid: its top-left character is the stride-1 map's at the same
    window, as the cells (4i, 4j) of a denser map are the ordinary map."""
    fine = np.random.default_rng(0).random((40, 60))
    coarse = fine[::4, ::4]
    text = digits_canvas.side_by_side(coarse, fine, 4, (21, 35), 7)
    assert "rows 8…23, columns 24…39" in text  # 4 coarse cells a side around the window at (17, 31)
    left, right = drawn(text)
    assert len(left) == len(right) == 16 and {len(row) for row in left + right} == {16}
    for y in range(16):
        for x in range(16):
            assert left[y][x] == left[y - y % 4][x - x % 4]
            assert right[y][x] == digits_canvas.RAMP[int(fine[8 + y, 24 + x] * 10)]
        if y % 4 == 0:
            assert left[y][::4] == right[y][::4]
    near_edge = digits_canvas.side_by_side(coarse, fine, 4, (2, 2), 7)  # clipped to the maps
    assert "rows 0…15, columns 0…15" in near_edge


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_denser_map_on_the_demo_canvas(trained_digits, tmp_path, capsys):
    """The demo's step 5 with both ONNX models: the stride-1 map's cells (4i, 4j) are the stride-4 map, a heatmap
    per placed digit, and one digit's two maps side by side."""
    assert digits_canvas.compose_command(tmp_path / "canvas.png", tmp_path / "placed.json", 8, 1) == 0
    paths = []
    for name, density in (("digits", 1), ("stride1", 4)):
        converted = fc2conv.convert(trained_digits, (1, WINDOW, WINDOW), density=density)
        paths.append(fc2conv.export_onnx(converted, tmp_path / f"{name}.onnx", labels=LABELS))
    capsys.readouterr()
    assert digits_canvas.denser_command(tmp_path / "canvas.png", tmp_path / "placed.json", *paths, tmp_path, 7) == 0
    out = capsys.readouterr().out
    assert "a 113×209 map of windows every 1 pixel (stride 4: 29×53)" in out
    difference = float(out.split("max relative difference ")[1].split()[0])
    assert difference <= 1e-5
    placed = [p["digit"] for p in json.loads((tmp_path / "placed.json").read_text())]
    assert sorted(p.name for p in tmp_path.glob("heatmap_*_stride1.png")) == [
        f"heatmap_{d}_stride1.png" for d in sorted(placed)]
    left, right = drawn(out)
    assert len(left) == len(right) == 16
    assert "@" in "".join(right)  # the placed 7 scores ≥ 0.9 somewhere near its place


@pytest.mark.slow
def test_demo_script_runs_end_to_end():
    done = subprocess.run(["bash", ROOT / "scripts" / "demo.sh"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "all 8 digits found" in done.stdout
    assert "its cells (4i, 4j) against the stride-4 map: max relative difference" in done.stdout
    assert (ROOT / "out" / "demo" / "heatmap_7_stride1.png").is_file()
