"""data_prep: from the public raw releases (HCP CIFTI-2, GOD BData HDF5, BOLD5000 GLMsingle NIfTI) to the
layouts mindvis reads. Installed as ``mindvis.data_prep``; the command is ``mindvis-prep``."""
