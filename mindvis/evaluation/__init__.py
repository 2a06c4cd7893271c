"""Evaluation of reconstructions: n-way semantic classification, pair-wise identification, FID."""
from .evaluate import evaluate, markdown_report, write_report

__all__ = ["evaluate", "markdown_report", "write_report"]
