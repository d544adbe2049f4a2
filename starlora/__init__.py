"""starlora: LoRA fine-tuning inside an active-learning loop, with STAR (arXiv 2403.01165)."""

__version__ = "0.1.0"
