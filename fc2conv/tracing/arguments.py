"""One spelling of every call in a traced graph: arguments given by keyword are moved to their positions.

`F.linear(x, weight=w, bias=b)`, `torch.flatten(x, start_dim=1)`, `x.mean(dim=(2, 3), keepdim=True)` and
`self.fc(input=x)` mean what their positional spellings mean, but code that reads `node.args[1]` sees only the
latter. Right after tracing, each call_function, call_method and call_module node's keyword arguments are matched to
the callee's signature (Python's, else the one torch.fx derives from the operator's schema,
`torch.fx.operator_schemas.get_signature_for_torch_op`, the overload that binds) and the longest run of them that
continues the positional arguments moves into `args`. Arguments after a gap (a later parameter given, an earlier
one left to its default) stay keywords: no default is invented, so the call is unchanged; the analysis reads
those with `fc2conv.analysis.ops.arg(node, index, name, default)`, by position or by name.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import fx

__all__ = ["positional_arguments"]


def positional_arguments(gm: fx.GraphModule) -> int:
    """Move keyword arguments to their positions in every call of `gm`'s graph (see the module docstring); returns
    how many nodes changed."""
    modules = dict(gm.named_modules())
    changed = 0
    for node in gm.graph.nodes:
        if not node.kwargs or node.op not in ("call_function", "call_method", "call_module"):
            continue
        names = _parameters(node, modules)
        if not names:
            continue
        args, kwargs = list(node.args), dict(node.kwargs)
        while len(args) < len(names) and names[len(args)] in kwargs:
            args.append(kwargs.pop(names[len(args)]))
        if len(args) != len(node.args):
            node.args, node.kwargs = tuple(args), kwargs
            changed += 1
    if changed:
        gm.recompile()
    return changed


def _parameters(node: fx.Node, modules: dict[str, Any]) -> list[str] | None:
    """The names of the callee's positional parameters in order (the tensor a method is called on first), from the
    first signature that binds the node's arguments; None when none is known or none binds."""
    if node.op == "call_module":
        module = modules.get(node.target)
        signatures = [_signature(module.forward)] if module is not None else []
    elif node.op == "call_method":
        function = getattr(torch, node.target, None)  # x.mean(dim=…) is torch.mean(x, dim=…)
        signatures = _signatures(function) if function is not None else []
    else:
        signatures = _signatures(node.target)
    for signature in signatures:
        if signature is None:
            continue
        try:
            signature.bind(*node.args, **node.kwargs)
        except TypeError:
            continue
        names = []
        for parameter in signature.parameters.values():
            if parameter.kind not in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                break  # *args, or keyword-only from here on
            names.append(parameter.name)
        return names
    return None


def _signatures(function: Any) -> list[inspect.Signature | None]:
    found = _signature(function)
    if found is not None:
        return [found]
    from torch.fx.operator_schemas import get_signature_for_torch_op

    try:
        return list(get_signature_for_torch_op(function) or [])
    except Exception:  # not an operator torch.fx knows: no signature, the call stays as it was written
        return []


def _signature(function: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):  # builtins without one
        return None
