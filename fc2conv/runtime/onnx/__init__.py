"""ONNX to ONNX without PyTorch: an ONNX classifier's head rewritten as convolutions (`convert`: `convert_onnx`, with
`rules`, `pools` and `graph`), and a result run in onnxruntime before it is written (`check`, which the PyTorch
export uses too). Users import `convert_onnx` from `fc2conv` or `fc2conv.onnx`."""
