"""Stage A of MinD-Vis: SC-MBM pretraining on resting-state fMRI and tuning on a target dataset.

Installed as ``mindvis.pretrain``; the command is ``mindvis-pretrain``.
"""
from .config import PretrainConfig
from .engine import pretrain

__all__ = ["PretrainConfig", "pretrain"]
