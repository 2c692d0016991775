"""One model per timm architecture module, converted and verified: what fc2conv does with each (issue 31).

    python scripts/timm_sweep.py --out out/timm_sweep.json --table out/timm_sweep.md
    python scripts/timm_sweep.py --modules resnet vgg --budget 600
    python scripts/timm_sweep.py --one resnet10t          # one model, its record as JSON on stdout
    python scripts/timm_sweep.py --from out/timm_sweep.json --table out/timm_sweep.md   # report again, run nothing

Models. timm's registry maps every model name to the module that defines it (`timm.list_modules()`,
`timm.list_models(module=...)`). The smallest variant of a module is its model with the fewest parameters,
counted by building each of its models on the meta device (`with torch.device("meta")`: no memory, no weights;
ties go to the first name). `--counts` caches the counts in a JSON file (all of timm's models take ~6 minutes).

Each model, in a process of its own (forked from the sweep's, which has imported timm, torch and fc2conv; killed
after `--timeout` seconds, default 120, then it is "too slow/large"), is built with random weights
(`pretrained=False`, seed 0, its default classes, 1000 for a backbone without a classifier) at its default input
size (timm's pretrained config `input_size`, as `fc2conv.storage.architectures.default_input_shape` reads it),
converted (`fc2conv.convert`, dense) and verified (`fc2conv.verify`, batch 1): at the reference size and one larger
size (fc2conv's default larger size; where the original does not run there, H+64×W+32, then 2H×2W). Its geometry
(stride, window, exact; `stage` says which call raised) is recorded, or the refusal's first line. Results:

- "exact": verify passes at the reference size and at a larger one, where the map has more than one cell;
- "refused: attention/tokens": a ConversionError saying the model mixes positions by attention or reads tokens;
- "refused: other": any other ConversionError (its first line is the reason);
- "failed": an exception other than ConversionError, a message asking to "please report" the model, a verify
  check that fails, or a one-cell map at the larger size;
- "wrong geometry": a stride or window that is not positive;
- "too slow/large": more than `--max-params` parameters at its smallest (default 140M), or over `--timeout`.

A model "kind" is "attention" when its module's smallest variant mixes positions by attention, token MLPs, a
recurrence or a state-space scan (`ATTENTION_MODULES`, read off each module's blocks), else "cnn". What issue 31
asks: CNNs are "exact"; attention models are "exact" or "refused: attention/tokens"; nothing "failed".

Models run smallest first; after `--budget` seconds (default 2400) the remaining modules are listed as not run.
The JSON (`--out`, rewritten after every model) holds every record and the run's date, timm and torch versions and
CPU; the Markdown summary and table (`--table`, scripts/timm_sweep_report.py) are the ones docs/supported.md shows.
`--from` reports a JSON again with its records classified again by this file's rules, running nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):  # fc2conv, and the report beside this file however this file is loaded
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from timm_sweep_report import cpu_name, render, times  # noqa: E402 - found through the path above

# What a refusal says when the model mixes positions (attention, token MLPs) or reads tokens: fc2conv's messages.
ATTENTION_WORDS = ("attention", "token", "transformer", "sequences")
# Modules whose smallest variant mixes positions beyond a convolution's reach: self-attention (ViTs, Swin, hybrids),
# linear or additive attention (efficientvit_mit's LiteMLA, cpubone's and lowformer's ConvAttention, swiftformer),
# single-head attention (shvit, iformer), channel-covariance attention (edgenext, xcit), token MLPs (mlp_mixer's
# gMLP), LSTMs over rows and columns (sequencer) and state-space scans (efficientvim's HSMSSD). The rest are CNNs,
# squeeze-excitation, split attention (resnest), selective kernels (sknet), global context (focalnet's modulation)
# and RepMixer (fastvit_t8) included: those see the whole input through pools, which fc2conv keeps.
ATTENTION_MODULES = frozenset({
    "beit", "byoanet", "cait", "coat", "convit", "cpubone", "crossvit", "csatv2", "davit", "deepseek_vit", "deit",
    "edgenext", "efficientformer", "efficientformer_v2", "efficientvim", "efficientvit_mit", "efficientvit_msra", "eva",
    "gcvit", "gemma4_vit", "hiera", "hieradet_sam2", "iformer", "levit", "lowformer", "maxxvit", "mlp_mixer",
    "mobilenetv5", "mobilevit", "mvitv2", "naflexvit", "nest", "nextvit", "pit", "pvt_v2", "qwen3_vit", "sequencer",
    "shvit", "swiftformer", "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr", "tiny_vit", "tnt",
    "twins", "visformer", "vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos",
    "vision_transformer_sam", "vitamin", "volo", "xcit",
})
MAX_PARAMS = 140_000_000
DEFAULT_CLASSES = 1000
TIMEOUT = 120.0
BUDGET = 2400.0


# --- choosing the models ------------------------------------------------------------------------------------------


def count_parameters(name: str) -> int | None:
    """timm model `name`'s parameters, built on the meta device (no memory, no weights); None if it does not build
    there."""
    import timm
    import torch

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception:  # a model that cannot be built on meta is ranked last, not fatal
        return None
    return sum(p.numel() for p in model.parameters())


def module_of(name: str) -> str:
    from timm.models._registry import _model_to_module

    return _model_to_module[name]


def smallest(module: str, counts: dict[str, int | None] | None = None) -> tuple[str, int | None]:
    """The model of timm module `module` with the fewest parameters and their number (`counts` caches them)."""
    import timm

    counts = {} if counts is None else counts
    names = timm.list_models(module=module)
    if not names:
        raise ValueError(f"timm has no models in module {module!r}")
    for name in names:
        if name not in counts:
            counts[name] = count_parameters(name)
    name = min(names, key=lambda n: (math.inf if counts[n] is None else counts[n], n))
    return name, counts[name]


def default_classes(name: str) -> int:
    """How many classes timm model `name` scores by default; 0 for a backbone without a classifier (DINOv3's
    ViTs, SAM2's Hiera), which the sweep gives DEFAULT_CLASSES: fc2conv converts classifiers, and a model
    without a head would be refused for that rather than for what its backbone does."""
    import timm

    config = timm.models.get_pretrained_cfg(name)
    return DEFAULT_CLASSES if config is None or config.num_classes is None else int(config.num_classes)


def kind_of(module: str) -> str:
    return "attention" if module in ATTENTION_MODULES else "cnn"


# --- one model --------------------------------------------------------------------------------------------------


def examine(model: Any, input_shape: Sequence[int]) -> dict[str, Any]:
    """What fc2conv does with `model` (eval mode) at `input_shape`: convert (dense), geometry, verify at the
    reference size and a larger one. The raw outcome, for `classify`: `error` (type and first line) or `stride`,
    `window`, `exact`, `context`, `checks` (name, input size, output shape, max rel, passed, note)."""
    import fc2conv
    from fc2conv.errors import ConversionError, first_line

    shape = tuple(int(s) for s in input_shape)
    record: dict[str, Any] = {"input": list(shape)}
    stage = "convert"  # which call raised: a refusal by convert is not a geometry that cannot be derived
    try:
        converted = fc2conv.convert(model, input_shape=shape)
        stage = "geometry"
        geo = fc2conv.geometry(converted)
        record.update(stride=list(geo.stride), window=list(geo.window), exact=geo.exact, context=geo.context[:300],
                      receptive_field=None if geo.receptive_field is None else [list(p) for p in geo.receptive_field])
        stage = "verify"
        report = fc2conv.verify(model, converted, batch=1)
        checks = list(report.checks)
        height, width = shape[-2:]
        for size in ((height + 64, width + 32), (2 * height, 2 * width)):
            if len(checks) > 1 and checks[1].passed is not None:
                break
            if len(checks) > 1 and tuple(checks[1].input_size) == size:
                continue
            checks = list(fc2conv.verify(model, converted, sizes=[size], batch=1).checks)
        record["checks"] = [{"name": c.name, "input": list(c.input_size), "output": list(c.output_shape),
                             "max_rel": c.max_rel, "passed": c.passed, "note": c.note} for c in checks]
    except Exception as e:  # every outcome is recorded; classify says which are bugs
        record["error"] = {"type": type(e).__name__, "conversion_error": isinstance(e, ConversionError),
                           "message": first_line(e, limit=400), "stage": stage}
    return record


def classify(record: dict[str, Any]) -> tuple[str, str]:
    """(result, reason) of a record of `examine` (or one skipped before it ran, with `skipped`)."""
    if "skipped" in record:
        return "too slow/large", record["skipped"]
    error = record.get("error")
    if error:
        # Said when convert accepted the model and geometry or verify raised: a different bug, or refusal.
        message = ("" if error.get("stage", "convert") == "convert" else f"{error['stage']}: ") + error["message"]
        if not error["conversion_error"] or "please report" in message.lower():
            return "failed", f"{error['type']}: {message}"
        if any(word in message.lower() for word in ATTENTION_WORDS):
            return "refused: attention/tokens", message
        return "refused: other", message
    stride, window = record["stride"], record["window"]
    if any(s <= 0 for s in stride) or any(w <= 0 for w in window):
        return "wrong geometry", f"stride {stride}, window {window}"
    checks = record["checks"]
    failed = [c for c in checks if c["passed"] is False]
    if failed:
        return "failed", "; ".join(f"verify {c['name']} at {times(c['input'])}: "
                                   f"{c['note'] or format(c['max_rel'], '.1e') + ' max rel'}" for c in failed)
    if not checks or checks[0]["passed"] is not True:
        return "failed", "verify could not check the reference size"
    larger = checks[1] if len(checks) > 1 else None
    if larger is None or larger["passed"] is not True:
        return "failed", "no larger size checked" + (f" ({larger['note']})" if larger and larger["note"] else "")
    cells = larger["output"][2:]
    if math.prod(cells) <= 1:
        return "failed", f"one cell at {times(larger['input'])}"
    return "exact", f"stride {times(stride)}, window {times(window)}" + ("" if record["exact"] else
                                                                          " (exact False)" if record["exact"] is False
                                                                          else " (exact unknown)")


def check(name: str, max_params: int | None = MAX_PARAMS) -> dict[str, Any]:
    """timm model `name` built with random weights at its default input size, examined and classified, in this
    process (no time limit: `sweep` runs each in a child process for that)."""
    import timm
    import torch

    module = module_of(name)
    record: dict[str, Any] = {"module": module, "model": name, "kind": kind_of(module)}
    params = count_parameters(name)
    record["params"] = params
    shape = _input_shape(name)
    record["input"] = shape
    if max_params is not None and params is not None and params > max_params:
        record["skipped"] = f"{params / 1e6:.0f}M parameters at its smallest (over {max_params / 1e6:.0f}M)"
    else:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's and fc2conv's notices; the outcome is in the record
            torch.manual_seed(0)
            classes = {} if default_classes(name) else {"num_classes": DEFAULT_CLASSES}
            record["classes"] = classes.get("num_classes", default_classes(name))
            model = timm.create_model(name, pretrained=False, **classes).eval()
            record.update(examine(model, shape))
        record["seconds"] = round(time.perf_counter() - started, 1)
    record["result"], record["reason"] = classify(record)
    return record


# --- the sweep --------------------------------------------------------------------------------------------------


def _child(name: str, max_params: int, threads: int, pipe: Any) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        pipe.send(check(name, max_params))
    except BaseException as e:  # check records what fc2conv raises; this is the sweep's own failure
        pipe.send({"module": module_of(name), "model": name, "kind": kind_of(module_of(name)),
                   "error": {"type": type(e).__name__, "conversion_error": False,
                             "message": f"the sweep's check itself failed: {str(e)[:300]}"}})
    finally:
        pipe.close()


def _input_shape(name: str) -> list[int]:
    from fc2conv.storage.architectures import default_input_shape

    return list(default_input_shape(f"timm:{name}"))


def run_one(name: str, timeout: float, max_params: int, threads: int) -> dict[str, Any]:
    """`check(name)` in a forked child process (timm, torch and fc2conv already imported), killed after `timeout`
    seconds."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(name, max_params, threads, send), daemon=True)
    started = time.perf_counter()
    child.start()
    send.close()
    record = None
    if receive.poll(timeout):
        with contextlib.suppress(EOFError):  # the child died before it sent its record
            record = receive.recv()
    child.join(5)
    if child.is_alive():
        child.kill()
        child.join()
    seconds = round(time.perf_counter() - started, 1)
    if record is None:
        record = {"module": module_of(name), "model": name, "kind": kind_of(module_of(name)), "seconds": seconds,
                  "input": _input_shape(name)}
        if child.exitcode in (None, -9) or seconds >= timeout:
            record["skipped"] = f"over {timeout:.0f} s"
        else:
            record["error"] = {"type": "ChildProcess", "conversion_error": False,
                               "message": f"the check's process ended without a record (exit code {child.exitcode})"}
    if "result" not in record:  # the child's own failure (see _child) comes unclassified
        record["result"], record["reason"] = classify(record)
    return record


def sweep(modules: Iterable[str], *, counts_path: Path | None, timeout: float, max_params: int, budget: float,
          threads: int, log: Callable[[str], None] = print,
          partial: Callable[[list[dict[str, Any]]], None] | None = None
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records of the smallest model of every module in `modules`, smallest first, and the modules (module, model,
    kind) not run within `budget` seconds. `partial` gets the records so far after each model (a long sweep cut
    short keeps what it did)."""
    counts: dict[str, int | None] = {}
    if counts_path and counts_path.exists():
        counts = json.loads(counts_path.read_text())
    chosen = []
    for module in modules:
        name, params = smallest(module, counts)
        chosen.append((math.inf if params is None else params, module, name))
        if counts_path:
            counts_path.write_text(json.dumps(counts, indent=0, sort_keys=True))
    chosen.sort()
    records: list[dict[str, Any]] = []
    not_run: list[dict[str, Any]] = []
    started = time.perf_counter()
    for params, module, name in chosen:
        if time.perf_counter() - started > budget:
            not_run.append({"module": module, "model": name, "kind": kind_of(module),
                            "params": None if params == math.inf else params})
            continue
        record = run_one(name, timeout, max_params, threads)
        record.setdefault("params", None if params == math.inf else params)
        records.append(record)
        log(f"{module:28s} {name:40s} {record['result']:26s} {record.get('seconds', '')!s:>6} {record['reason'][:120]}")
        if partial is not None:
            partial(records)
    return records, not_run


def _reclassified(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's facts and its records from a sweep's JSON, each record classified again (by this file's rules:
    a report redone without running the models again)."""
    data = json.loads(path.read_text())
    records = data.pop("records")
    for record in records:
        record["result"], record["reason"] = classify(record)
    # Older files name the modules not run only.
    data["not_run"] = [m if isinstance(m, dict) else {"module": m, "model": "", "kind": kind_of(m)}
                       for m in data.get("not_run", [])]
    return data, records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", metavar="MODEL", help="check one timm model in this process; print its record")
    parser.add_argument("--modules", nargs="+", help="timm modules to sweep (default: every one)")
    parser.add_argument("--from", dest="source", type=Path, metavar="JSON",
                        help="run nothing: report a sweep's JSON again, its records classified again")
    parser.add_argument("--out", type=Path, help="write the records as JSON here (after every model)")
    parser.add_argument("--table", type=Path, help="write the Markdown summary and table here")
    parser.add_argument("--counts", type=Path, help="cache of parameter counts (JSON), read and updated")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per model (default %(default)s)")
    parser.add_argument("--max-params", type=int, default=MAX_PARAMS, help="skip larger models (default %(default)s)")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for the sweep (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model (default %(default)s)")
    args = parser.parse_args(argv)

    if args.source:
        meta, records = _reclassified(args.source)
    else:
        import timm
        import torch

        from fc2conv.conversion import rewrite, verification  # noqa: F401 - imported here once, not in every check

        if args.one:
            torch.set_num_threads(args.threads)
            print(json.dumps(check(args.one, args.max_params)))
            return 0
        modules = args.modules or timm.list_modules()
        unknown = sorted(set(modules) - set(timm.list_modules()))
        if unknown:
            parser.error(f"not timm modules: {', '.join(unknown)}")
        started = time.perf_counter()
        meta = {"date": date.today().isoformat(), "timm": timm.__version__, "torch": torch.__version__,
                "cpu": cpu_name(), "threads": args.threads, "timeout": args.timeout, "max_params": args.max_params,
                "budget": args.budget, "seconds": 0, "not_run": []}

        def save(records: list[dict[str, Any]]) -> None:
            if args.out:
                meta["seconds"] = round(time.perf_counter() - started)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({**meta, "records": records}, indent=1))

        records, meta["not_run"] = sweep(modules, counts_path=args.counts, timeout=args.timeout,
                                         max_params=args.max_params, budget=args.budget, threads=args.threads,
                                         log=lambda line: print(line, flush=True), partial=save)
        save(records)
        meta["seconds"] = round(time.perf_counter() - started)
    text = render(meta, records)
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    print(text)
    return 1 if any(r["result"] in ("failed", "wrong geometry") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
