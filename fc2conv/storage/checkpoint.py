"""Read checkpoints without running their code, check them against a model, and write files atomically.

    state_dict = load_state_dict("resnet18.pth")              # weights only: never unpickles code
    load_into(model, state_dict, source="resnet18.pth")       # all keys and shapes match, or nothing loads
    save_state_dict(model.state_dict(), "out.safetensors")    # temp file + fsync + rename
    read_metadata("out.safetensors")                          # the string metadata saved with it

Every failure raises `InputError` naming the file and saying what to do next.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from ..errors import ConversionError, InputError, first_line, translated
from ..runtime.files.atomic import atomic_output
from .unpickling import safe_torch_load

__all__ = ["atomic_output", "load_into", "load_state_dict", "read_metadata", "save_state_dict"]

StateDict = dict[str, torch.Tensor]

# Where training checkpoints keep the weights, in the order they are tried.
NESTED_KEYS = (
    "state_dict", "model", "model_state_dict", "module", "net", "network",
    "ema", "model_ema", "state_dict_ema",
)
# Added to every key by DataParallel / DistributedDataParallel and by torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_SAFETENSORS_HEADER_LIMIT = 100_000_000  # the largest header safetensors reads
RESAVE_HINT = ", or re-save just the weights with torch.save(model.state_dict(), ...)"


def load_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> StateDict:
    """The tensors of the checkpoint at `path`, keyed as `model.state_dict()` keys them, on the CPU.

    Reads `.safetensors` files and `torch.save` files (zip or legacy format) holding either a bare state dict
    or a training checkpoint that nests it under one of `NESTED_KEYS` (searched two levels deep, first match
    wins). `module.` and `_orig_mod.` prefixes shared by every key are stripped.

    Unless `trust_pickle`, the file is read with `torch.load(weights_only=True)`, so no code in it runs; a
    file that holds more than tensors and plain containers (a pickled `nn.Module`, custom classes) is refused
    with the global it needs. With `trust_pickle` it is fully unpickled, which can run arbitrary code, and a
    pickled `nn.Module` gives its `state_dict()`. TorchScript archives are always refused.

    Raises `InputError` for a missing, empty, truncated or corrupted file, a directory, or a file
    holding no state dict.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): the download or save did not complete")
    if path.suffix == ".safetensors":
        _refuse_duplicate_keys(path)
        with translated(InputError, f"{path} is not a valid safetensors file (", end="): its header does not match "
                        "its data, so it is truncated or corrupted; re-download or re-save it"):
            found = load_file(path)
    else:
        loaded = _torch_load(path, trust_pickle)
        found = _find_state_dict(loaded)
        if found is None:
            raise InputError(f"{path} holds no state dict: it is {_describe(loaded)}")
    if not found:
        raise InputError(f"{path} holds no tensors: it is an empty state dict")
    return _strip_wrapper_prefixes(dict(found))


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy `state_dict` into `model`, which is changed only if every key and shape matches.

    Raises `InputError` naming `source` with the missing keys, the unexpected keys and the shape
    mismatches, a line each (the first three of each, with counts: a refusal stays a few lines). A missing
    `num_batches_tracked` is allowed: BatchNorm fills it in, as `nn.Module.load_state_dict` does for old checkpoints.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: model {tuple(v.shape)}, file {tuple(state_dict[k].shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            _listing("missing from the file", missing),
            _listing("unexpected in the file", unexpected),
            _listing("shape mismatches", mismatched),
        ]
        raise InputError(
            f"{source} does not fit this {type(model).__name__}; is it a checkpoint of another architecture "
            "or another number of classes?\n" + "\n".join(p for p in problems if p)
        )
    # A plain dict carries no `_metadata`, so BatchNorm treats it as an old checkpoint (see above).
    model.load_state_dict(dict(state_dict), strict=True)


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    force: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write `state_dict` to `path` atomically (see `atomic_output`) as `.safetensors` or `.pt`/`.pth`/`.bin`.

    Tensors are moved to the CPU and made contiguous; tensors sharing storage are cloned so each is saved on
    its own. `.safetensors` stores `metadata` in its header; the torch formats hold a plain dict of tensors,
    or ``{"state_dict": tensors, "metadata": metadata}`` when metadata is given, both loadable with
    `weights_only=True`. The file reads back with `load_state_dict` and `read_metadata`.
    """
    path = Path(path)
    if path.suffix != ".safetensors" and path.suffix not in TORCH_SUFFIXES:
        raise InputError(f"{path}: unknown checkpoint format; name it .safetensors or .pt")
    if metadata and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InputError(f"{path}: metadata keys and values must be strings, got {metadata!r}")
    tensors = _own_storage(state_dict)
    with atomic_output(path, force=force) as tmp:
        if path.suffix == ".safetensors":
            # Serialised in memory and written here: safetensors' own writer goes through a temporary file of its
            # own beside the output, which a killed process would leave under a name fc2conv does not know.
            tmp.write_bytes(save_bytes(tensors, metadata=metadata))
        else:
            buffer = io.BytesIO()  # torch's C++ zip writer aborts the process on a full disk: write in Python
            torch.save({"state_dict": tensors, "metadata": dict(metadata)} if metadata else tensors, buffer)
            tmp.write_bytes(buffer.getbuffer())


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata `save_state_dict` stored in `path` (empty when there is none); never unpickles code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _refuse_duplicate_keys(path)
        with translated(InputError, f"{path} is not a readable safetensors file (", end=")"), \
                safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    loaded = _torch_load(path, trust_pickle=False)
    metadata = loaded.get("metadata") if isinstance(loaded, Mapping) else None
    if isinstance(metadata, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        return dict(metadata)
    return {}


def _refuse_duplicate_keys(path: Path) -> None:
    """Refuse a safetensors header that names a key twice: the library would silently keep the last one.

    Other header faults are left to safetensors, whose errors `load_state_dict` explains.
    """
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            header = f.read(length) if 0 < length <= _SAFETENSORS_HEADER_LIMIT else b""
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InputError(f"{path}: its safetensors header names {key!r} twice; the file is corrupted "
                                 "or was written to mislead (which copy would load is undefined)")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(header, object_pairs_hook=unique)
    except ConversionError:
        raise
    except ValueError:  # not JSON (or empty): safetensors reports it
        pass


def _torch_load(path: Path, trust_pickle: bool) -> object:
    """`torch.load` of a zip or legacy checkpoint, with every failure explained."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
    if is_zip:
        _check_archive(path)
    try:
        if not trust_pickle:
            return safe_torch_load(path, str(path), mmap=is_zip, hint=RESAVE_HINT)
        return torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip)
    except ConversionError:
        raise
    except pickle.UnpicklingError as e:
        raise InputError(f"{path} is corrupted or not a PyTorch checkpoint ({first_line(e)})") from None
    except Exception as e:  # torch.load fails in many types on a damaged file; its own hint is cut off
        cause = first_line(e, named=True).split(". This is an internal")[0]
        raise InputError(f"{path} is truncated, corrupted or not a PyTorch checkpoint ({cause})") from None


def _check_archive(path: Path) -> None:
    """Refuse zip files that are broken (CRC included: torch.load does not check it), TorchScript, or not
    written by `torch.save`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path} is a truncated or corrupted zip archive ({e}); get it again") from None
    if damaged is not None:
        raise InputError(f"{path} is corrupted: record {damaged!r} fails its CRC check; get it again")
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise InputError(
            f"{path} is a TorchScript archive (torch.jit.save), which cannot be loaded as a state dict; "
            "export one with torch.save(torch.jit.load(path).state_dict(), 'weights.pt')"
        )
    if not any(n.endswith("/data.pkl") for n in names):
        raise InputError(f"{path} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)")


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _find_state_dict(obj: object, depth: int = 2) -> Mapping[str, torch.Tensor] | None:
    """`obj` if it is a state dict, else the first found under `NESTED_KEYS` within `depth` levels."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj
    if depth == 0 or not isinstance(obj, Mapping):
        return None
    for key in NESTED_KEYS:
        found = _find_state_dict(obj.get(key), depth - 1)
        if found is not None:
            return found
    return None


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:10])
        more = f" and {len(obj) - 10} more" if len(obj) > 10 else ""
        return f"a {type(obj).__name__} of {{{keys}{more}}}; expected tensors, or under one of {NESTED_KEYS}"
    return f"a {type(obj).__name__}; expected a mapping of tensors"


def _strip_wrapper_prefixes(state_dict: StateDict) -> StateDict:
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None):
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f"; and {len(items) - 3} more" if len(items) > 3 else ""
    return f"  {title} ({len(items)}): " + "; ".join(items[:3]) + more


def _own_storage(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Contiguous CPU tensors, each the sole owner of its whole storage (cloned where it was shared)."""
    tensors: StateDict = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    return tensors
