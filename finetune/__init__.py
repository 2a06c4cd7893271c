"""Stage B of MinD-Vis: DC-LDM fine-tuning on fMRI-image pairs, and a small-prior trainer.

Installed as ``mindvis.finetune``; the commands are ``mindvis-finetune`` and ``mindvis-train-prior``.
"""
