"""Tracing: a model as a torch.fx graph with every node's shape at the reference input (`trace`), through the
tracers tried in order (`tracers`); the sizes a trained model fixes made concrete and those its input sets kept
symbolic (`sized`, with the meta-tensor `runs` that tell them apart and what to `keep` whole); TensorFlow's SAME
padding made a layer (`padding`); the class scores in what a model returns (`scores`); and why a model cannot be
traced, in the user's words (`diagnose`). Needs PyTorch.
"""
