import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# tests/helpers.py and the example models in models/ import from the repository root.
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fc2conv.runtime.cpu import CLASSES, PIN, detect  # noqa: E402 - after the path set-up

# `scripts/test.sh` runs two pytest-xdist workers on CI's two cores: one torch thread each, as two threads
# per worker would oversubscribe the cores (and most of the suite is Python-bound: tracing, small models). A child
# process whose outputs a test compares bit for bit with its own runs as many: see helpers.same_threads_env.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

# Every hypothesis test, also one without its own @settings: the same examples on every run, and no deadline (the
# default 200 ms per example fails examples that are slow only because the 2-core CI box is busy).
settings.register_profile("fc2conv", deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fc2conv")


# The CPU class fc2conv decides for (fc2conv.runtime.cpu): `pytest --cpu-class avx2` runs the suite as if on an AVX2
# CPU (fc2conv's decisions and reports follow the pinned class; scripts/test_cpu.sh avx2 also emulates the CPU, so the
# backends run as there). A test that holds only on some classes says which with @pytest.mark.cpu(<property of
# fc2conv.runtime.cpu.Cpu>) and is skipped elsewhere, naming the class it met.


def pytest_addoption(parser):
    parser.addoption("--cpu-class", choices=sorted(CLASSES), default=None,
                     help="run as if on this CPU class (pins FC2CONV_CPU_CLASS; see fc2conv.runtime.cpu)")


def pytest_configure(config):
    # --precision auto caches its choices; the tests' go to a folder of their own, never the user's ~/.cache.
    if "FC2CONV_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["FC2CONV_CACHE_DIR"] = tempfile.mkdtemp(prefix="fc2conv-test-cache-")
    if config.getoption("--cpu-class"):
        os.environ[PIN] = config.getoption("--cpu-class")


def pytest_runtest_setup(item):
    for marker in item.iter_markers("cpu"):
        cpu = detect()
        if not getattr(cpu, marker.args[0]):
            pytest.skip(f"needs a CPU with {marker.args[0]} (this run: {cpu.kind}, from {cpu.source})")


@pytest.fixture(params=list(CLASSES))
def cpu_class(request, monkeypatch):
    """fc2conv pinned to each CPU class in turn (fc2conv.runtime.cpu); the class's `Cpu`."""
    monkeypatch.setenv(PIN, request.param)
    return detect()


# Fixtures more than one test module uses (each module's own fixtures stay in it).


@pytest.fixture
def small_arch_weights():
    """A copy of the state dict of strategies.SMALL_ARCH's model."""
    from strategies import SMALL_ARCH, build_generated

    return {k: v.clone() for k, v in build_generated(SMALL_ARCH).state_dict().items()}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A folder with a SmallCNN checkpoint (small.pt) and its conversion saved as small.pt2, with the recipe."""
    import torch

    import fc2conv
    from fc2conv.storage.recipe import Recipe
    from models.small_cnn import SmallCNN

    folder = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    model = SmallCNN().eval()
    torch.save(model.state_dict(), folder / "small.pt")
    recipe = Recipe(model_def="models/small_cnn.py:SmallCNN", input_shape=(3, 32, 32))
    fc2conv.save(fc2conv.convert(model, (3, 32, 32)), folder / "small.pt2", recipe=recipe)
    return folder


@pytest.fixture(scope="module")
def small_and_gray_onnx(tmp_path_factory):
    """(SmallCNN converted and exported without metadata of its own, a 1-channel CNN on 16×16 likewise)."""
    import torch

    import fc2conv
    from models.small_cnn import SmallCNN

    class GrayCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.fc = torch.nn.Linear(4 * 14 * 14, 5)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1))

    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    converted = fc2conv.convert(SmallCNN().eval(), (3, 32, 32))
    path = fc2conv.export_onnx(converted, folder / "small.onnx")
    gray = fc2conv.export_onnx(fc2conv.convert(GrayCNN().eval(), (1, 16, 16)), folder / "gray.onnx")
    return path, gray


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """The padded 3-channel SmallCNN of the scan tests, exported (stride 4, window 32, margins 3)."""
    from scan_helpers import export

    return export("small", tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """The trained digits CNN, exported with its labels."""
    from scan_helpers import export

    return export("digits", tmp_path_factory.mktemp("models"))


# The `fc2conv view` refusal tests (tests/test_view_*_refusals.py) corrupt copies of one real scan.


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    """A finished scan of a two-level slide by the digits CNN, with its detections (view_helpers.make_pristine)."""
    from view_helpers import make_pristine

    return make_pristine(tmp_path_factory)


@pytest.fixture
def copy(pristine, tmp_path):
    """A copy of `pristine` to corrupt, its store recording the copy's paths (view_helpers.Copy)."""
    from view_helpers import copy_of

    return copy_of(pristine, tmp_path)


@pytest.fixture
def view(monkeypatch):
    """`fc2conv view ARGS` in this process, with no display and napari unimportable, under a deadline."""
    from view_helpers import view_runner

    return view_runner(monkeypatch)
