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
from fc2conv.checkpoint import load_into, load_state_dict
from models.digits_cnn import LABELS, MARGIN, STRIDE, WINDOW, DigitsCNN, centred, load_split

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "digits_cnn.safetensors"
_spec = importlib.util.spec_from_file_location("digits_canvas", ROOT / "scripts" / "digits_canvas.py")
digits_canvas = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_canvas)


@pytest.fixture(scope="module")
def model() -> DigitsCNN:
    net = DigitsCNN()
    load_into(net, load_state_dict(CHECKPOINT), source=str(CHECKPOINT))
    return net.eval()


def test_checkpoint_is_small_and_accurate_on_the_test_split(model):
    assert CHECKPOINT.stat().st_size < 500_000
    _, x_test, _, y_test = load_split()
    with torch.no_grad():
        predicted = model(torch.from_numpy(centred(x_test)).float().div(255).unsqueeze(1)).argmax(1).numpy()
    assert (predicted == y_test).mean() >= 0.97


def test_dense_cells_are_the_model_on_crops(model):
    """No padding: every cell of the converted map is exactly the classifier on its 32×32 crop."""
    dense = fc2conv.convert(model, (1, WINDOW, WINDOW))
    geo = fc2conv.geometry(dense)
    assert geo.stride == (STRIDE, STRIDE) and geo.window == (WINDOW, WINDOW)
    canvas = torch.rand(1, 1, 48, 60, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = dense(canvas)
        for i, j in [(0, 0), (2, 3), (4, 7)]:
            top, left, bottom, right = geo.box(i, j)
            torch.testing.assert_close(out[0, :, i, j], model(canvas[:, :, top:bottom, left:right])[0],
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


def test_demo_canvas_digits_are_found_where_placed(model, tmp_path, capsys):
    from PIL import Image

    assert digits_canvas.compose_command(tmp_path / "canvas.png", tmp_path / "placed.json", 8, 1) == 0
    placed = json.loads((tmp_path / "placed.json").read_text())
    assert len({p["digit"] for p in placed}) == len(placed) == 8
    code, out = report(tmp_path, capsys, placed, best_cells(model, np.asarray(Image.open(tmp_path / "canvas.png"))))
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


@pytest.mark.slow
def test_demo_script_runs_end_to_end():
    done = subprocess.run(["bash", ROOT / "scripts" / "demo.sh"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "all 8 digits found" in done.stdout
