"""Files flowprune ships (installed as the package ``flowprune._assets``): the tiny LM in
``tiny-llama-pydocs/``, trained by ``scripts/train_tiny_lm.py``."""
