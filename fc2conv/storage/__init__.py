"""Saving and loading: where original models come from (`architectures`: torchvision, timm, a user's file;
`huggingface`: `save_pretrained` directories) and how to rebuild one (`recipe`); checkpoints read without running
their code (`checkpoint`, with `unpickling` refusing any pickle that is not trusted); and converted models saved and
loaded (`artifact`), written atomically by the wing's `fc2conv.runtime.files.atomic`.

This package imports nothing itself; its modules need PyTorch.
"""
