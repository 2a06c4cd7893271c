"""Brain-to-embedding alignment (``mindvis-align``): ridge, MindEye's MLP and the SC-MBM encoder decode fMRI into an
image embedding space, scored by retrieval."""
