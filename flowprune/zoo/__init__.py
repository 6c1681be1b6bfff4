"""Small example architectures (random or seeded weights) used by the CLI's default, the tests and
the benchmarks: CNNs, an RNN and a ViT written in plain PyTorch, and tiny random-config Hugging Face
models.  ``ZOO[name].build()`` returns a fresh model in eval mode, ``ZOO[name].inputs()`` an example input.
"""

from .hf import HF
from .nets import NETS, ZooEntry

ZOO: dict[str, ZooEntry] = {**NETS, **HF}

__all__ = ["ZOO", "ZooEntry"]
