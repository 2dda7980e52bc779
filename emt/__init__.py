"""emt: the emergent misalignment tracker.

Trains a sweep of fine-tuning runs on SLURM (or locally), checkpoints every few steps, and
tracks when each misaligned trait emerges. Heavy dependencies (torch, vllm, openai) are imported
inside the functions that need them so that ``import emt`` and the launchers stay fast.
"""

__version__ = "0.1.0"
