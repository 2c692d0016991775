"""The class scores in what a classifier returns: the tensor itself, the `logits` of a dict or output dataclass
(Hugging Face's `ImageClassifierOutput...`, a `dict` subclass), or the one item of a 1-tuple (`return_dict=False`).

The same rule reads a traced graph's output (whose dicts and tuples hold fx nodes) and a model's real output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["scores_of"]

LOGITS = "logits"


def scores_of(output: Any) -> Any:
    """The scores in `output`, or `output` itself when it holds none of the forms above."""
    if isinstance(output, Mapping) and LOGITS in output:
        return output[LOGITS]
    if isinstance(output, tuple | list) and len(output) == 1:
        return output[0]
    return output
