"""The published settings of MindEye's image stages (steps, guidance, img2img strength, samples, seeds, MindEye2's
refinement and its negative prompt, the saved size), the latent scales of the first stages and CLIP's
normalisation."""
from __future__ import annotations

SD_SCALE = 0.18215  # Stable Diffusion 1.x / 2.x VAE latent scale (MindEye1's literal)
SDXL_SCALE = 0.13025  # SDXL / unCLIP first stage
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# published settings
ME1_STEPS, ME1_GUIDANCE, ME1_STRENGTH, ME1_SAMPLES, ME1_SEED = 20, 3.5, 0.85, 16, 42
ME2_STEPS, ME2_GUIDANCE, ME2_OFFSET_NOISE, ME2_SEED = 38, 5.0, 0.04, 42
ME2_REFINE_STEPS, ME2_REFINE_TIMEPOINT, ME2_REFINE_GUIDANCE = 25, 13, 5.0
ME2_NEGATIVE_PROMPT = ("painting, extra fingers, mutated hands, poorly drawn hands, poorly drawn face, deformed, ugly, "
                       "blurry, bad anatomy, bad proportions, extra limbs, cloned face, skinny, glitchy, double torso, "
                       "extra arms, extra hands, mangled fingers, missing lips, ugly face, distorted face, extra legs, "
                       "anime")
ME2_SAVE_SIZE = 256
