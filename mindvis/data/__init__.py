"""Datasets: fMRI preprocessing, the HCP/GOD loaders and the synthetic world."""
