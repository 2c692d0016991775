"""TensorFlow's SAME padding as libraries spell it, replaced in a traced graph by `fc2conv.layers.SamePad`.

Hugging Face's MobileNet V1 and V2 (`apply_tf_padding`) and BiT (`DynamicPad2d`) compute their padding widths in
Python from the input's size (`int(x.shape[-2])`, a branch on its parity). fc2conv keeps such code whole
(`fc2conv.tracing.keep`), which is exact in PyTorch; but an exporter traces through it and writes the widths of the
size it traced, so an exported model would pad inputs of another parity wrongly. `SamePad` computes the same widths in a
form exporters keep symbolic.

Each spelling is a rule: `match` reads the padding's parameters from a node (None when it is not this spelling),
`check` returns why `SamePad` would differ from the original (both are run on small inputs of every parity along
every axis), and `substitute_same_padding` rewrites the node to call `SamePad` instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from ..layers import SamePad
from ..shapes import times

__all__ = ["substitute_same_padding"]

_HF = "transformers.models."


class _Spelling:
    """One library's spelling of SAME padding, by the qualified name of its function or module."""

    qualified_name: str

    def match(self, gm: fx.GraphModule, node: fx.Node) -> SamePad | None:
        raise NotImplementedError

    def original(self, gm: fx.GraphModule, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
        """The library's own padding of a tensor, as the node computes it."""
        raise NotImplementedError

    def check(self, gm: fx.GraphModule, node: fx.Node, pad: SamePad) -> str | None:
        original = self.original(gm, node)
        axes = len(pad.kernel)
        sides = [range(k, k + s + 1) for k, s in zip(pad.kernel, pad.stride, strict=True)]
        for size in itertools.product(*sides):
            x = torch.randn(1, 1, *size)
            with torch.no_grad():
                expected, actual = original(x), pad(x)
            if expected.shape != actual.shape or not torch.equal(expected, actual):
                return (f"on a {times(size)} input it gives {tuple(expected.shape[-axes:])}, SamePad "
                        f"{tuple(actual.shape[-axes:])}")
        return None


class _PaddingOfConv(_Spelling):
    """`apply_tf_padding(features, conv)` (Hugging Face's MobileNets): SAME for the conv's kernel and stride,
    the widths multiplied by its dilation when `scaled`."""

    def __init__(self, qualified_name: str, scaled: bool):
        self.qualified_name, self.scaled = qualified_name, scaled

    def match(self, gm: fx.GraphModule, node: fx.Node) -> SamePad | None:
        if node.op != "call_function" or _qualified(node.target) != self.qualified_name or len(node.args) != 2:
            return None
        conv = _attribute(gm, node.args[1])
        if not isinstance(conv, nn.Conv2d):
            return None
        return SamePad(conv.kernel_size, conv.stride, conv.dilation if self.scaled else None)

    def original(self, gm: fx.GraphModule, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
        conv = _attribute(gm, node.args[1])
        return lambda x: node.target(x, conv)


class _PaddingModule(_Spelling):
    """A module with `kernel_size`, `stride`, `dilation` and `value` (Hugging Face's BiT `DynamicPad2d`): SAME for
    the dilated kernel."""

    def __init__(self, qualified_name: str):
        self.qualified_name = qualified_name

    def match(self, gm: fx.GraphModule, node: fx.Node) -> SamePad | None:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if module is None or _qualified(type(module)) != self.qualified_name:
            return None
        kernel = tuple((k - 1) * d + 1 for k, d in zip(module.kernel_size, module.dilation, strict=True))
        return SamePad(kernel, module.stride, value=module.value)

    def original(self, gm: fx.GraphModule, node: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
        return gm.get_submodule(node.target)


SPELLINGS: tuple[_Spelling, ...] = (
    _PaddingOfConv(f"{_HF}mobilenet_v1.modeling_mobilenet_v1.apply_tf_padding", scaled=False),
    _PaddingOfConv(f"{_HF}mobilenet_v2.modeling_mobilenet_v2.apply_tf_padding", scaled=True),
    _PaddingModule(f"{_HF}bit.modeling_bit.DynamicPad2d"),
)


def substitute_same_padding(gm: fx.GraphModule) -> list[str]:
    """Replace every node of `gm` that is a known spelling of SAME padding by a call of `SamePad`, a new submodule
    of `gm` (the model's own modules are never changed). Returns a note per spelling it found but could not
    replace, saying why."""
    notes: list[str] = []
    replaced: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        for spelling in SPELLINGS:
            pad = spelling.match(gm, node)
            if pad is None:
                continue
            reason = spelling.check(gm, node, pad)
            if reason is not None:
                notes.append(f"'{node.name}' is kept as the library wrote it, so an export pads only the size it "
                             f"traced correctly: it is not SAME padding as fc2conv computes it ({reason})")
                break
            name = spelling.qualified_name.rsplit(".", 1)[-1]
            replaced[name] = replaced.get(name, 0) + 1
            _replace(gm, node, pad)
            break
    notes += [f"{name} ({count}×) is TensorFlow's SAME padding: fc2conv's SamePad computes the same widths from the "
              "input's size, in a form exporters keep symbolic" for name, count in replaced.items()]
    gm.recompile()
    return notes


def _replace(gm: fx.GraphModule, node: fx.Node, pad: SamePad) -> None:
    name = f"{node.name}_same"
    gm.add_submodule(name, pad)
    with gm.graph.inserting_before(node):
        replacement = gm.graph.call_module(name, (node.args[0],))
    replacement.meta = dict(node.meta)  # the user's line and module stack stay with it
    node.replace_all_uses_with(replacement)
    read = [n for n in node.all_input_nodes if n.op == "get_attr"]
    gm.graph.erase_node(node)
    for attribute in read:  # the conv a padding function read its sizes from, now unused
        if not attribute.users:
            gm.graph.erase_node(attribute)


def _qualified(thing: Any) -> str:
    return f"{getattr(thing, '__module__', '')}.{getattr(thing, '__qualname__', '')}"


def _attribute(gm: fx.GraphModule, node: Any) -> Any:
    """The object a get_attr node fetches, or None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value: Any = gm
    for part in node.target.split("."):
        value = getattr(value, part, None)
    return value
