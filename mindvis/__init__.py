"""mindvis: decoding seen images from fMRI (MinD-Vis, CVPR 2023) as installable software."""
__version__ = "0.1.0"
