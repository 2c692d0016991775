"""Conversion: the analysed graph (`fc2conv.analysis`) emitted as a fully convolutional network (`rewrite`: `convert`
and `plan`), with the maths of each rewrite on modules alone (`maths`), the modules a conversion adds (`layers`),
denser maps by filter rarefaction (`density`), and the result measured (`geometry`) and proved equal to the
original (`verification`). Needs PyTorch.
"""
