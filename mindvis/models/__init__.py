"""Neural network models of mindvis."""
from .pos_embed import interpolate_pos_embed, sincos_pos_embed_1d
from .sc_mbm import MBM_VARIANTS, FMRIEncoder, MaskedBrainModel, MBMConfig, PatchEmbed1D, mbm_config

__all__ = ["MBM_VARIANTS", "FMRIEncoder", "MaskedBrainModel", "MBMConfig", "PatchEmbed1D", "mbm_config",
           "interpolate_pos_embed", "sincos_pos_embed_1d"]
