"""Compatibility with the original MinD-Vis release formats."""
from .original import (OriginalCheckpointError, export_original_mbm, load_original_checkpoint,
                       load_original_encoder, load_original_mbm)

__all__ = ["OriginalCheckpointError", "export_original_mbm", "load_original_checkpoint",
           "load_original_encoder", "load_original_mbm"]
