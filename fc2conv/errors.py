"""The one exception fc2conv raises for models, files and arguments it cannot handle."""

__all__ = ["ConversionError"]


class ConversionError(ValueError):
    """A model, file or argument fc2conv cannot make convolutional.

    The message names the layer, node, file or flag at fault and says what to do next. Whatever raised it
    left the caller's model and files untouched.
    """
