"""Datasets: fMRI preprocessing and the readers of the releases (the synthetic world that writes them is
:mod:`mindvis.world`)."""
