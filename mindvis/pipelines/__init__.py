"""Sampling pipelines."""
from .mindvis_pipeline import SCHEDULERS, MindVisPipeline, make_scheduler

__all__ = ["SCHEDULERS", "MindVisPipeline", "make_scheduler"]
