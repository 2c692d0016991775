"""Saving and loading: where original models come from (`architectures`: torchvision, timm, a user's file;
`huggingface`: `save_pretrained` directories) and how to rebuild one (`recipe`); checkpoints read without running
their code (`checkpoint`, with `unpickling` refusing any pickle that is not trusted); converted models saved and
loaded (`artifact`); and every file fc2conv writes written atomically (`atomic`).

This package imports nothing itself: `atomic` is torch-free and used by the runtime, the others need PyTorch.
"""
