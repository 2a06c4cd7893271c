"""A synthetic brain world: images, a visual-cortex encoding model, and the files of HCP, GOD, BOLD5000, NSD,
THINGS-MEG and THINGS-EEG2.

The model, in short:

* **Images** belong to classes. A class is a set of attributes: a shape (disc, square, triangle,
  ring, cross, bar), a foreground and a background colour, a grating orientation and spatial
  frequency, a size and a preferred position. An image of a class jitters position, size, colours,
  orientation and grating phase and adds pixel noise.
* **Features**: each image is summarised on a ``grid`` x ``grid`` map of low-level features:
  luminance, red-green and blue-yellow opponency, oriented energy at 0/45/90/135 degrees, and local
  contrast.
* **Voxels** live on a cortical sheet per area (V1, V2, V3, V4 and, for task subjects, LOC, FFA,
  PPA). Consecutive voxels have neighbouring receptive-field centres (a Hilbert curve over the
  visual field); receptive fields are Gaussian and grow from V1 to the higher areas and with
  eccentricity. Each voxel weights the RF-pooled features by a tuning vector that varies smoothly
  along the sheet, so neighbouring voxels are correlated. Higher areas add a category component: a
  fixed nonlinear embedding of the class attributes (invariant to the instance jitter) read out by
  smoothly varying voxel loadings; its weight grows from V1 (none) to PPA.
* **Response nonlinearity** (``response="css"``, the default; ``"linear"`` with ``shared_noise=0`` is the
  earlier versions' model: its task fMRI equals theirs to float32 rounding, its resting state draws its noise in
  another order): a voxel's linear drive is rectified (a fraction ``response_floor`` of stimuli leaves it
  at rest), divided by the activity of its neighbourhood on the sheet (divisive normalisation, Heeger 1992; the DN
  stage of Kay et al. 2013, PLoS Comput Biol) and compressed by a power law with an exponent below one that falls
  from V1 to the higher areas (compressive spatial summation, Kay et al. 2013, J Neurophysiol).
* **Measurement**: each voxel's signal is scaled to unit variance and noise at signal-to-noise ratio ``snr``
  (variance ratio) is added: per voxel, part of it smooth along the sheet, and a fraction ``shared_noise`` common
  to all voxels through ``noise_factors`` sources with smooth loadings (the shared fluctuations that GLMdenoise,
  used for NSD's betas, estimates from noise-pool voxels). ``DEVICE_PRESETS`` name the single-trial SNR and test
  repetitions of 3T (GOD-like) and 7T (NSD-like) fMRI.
* **NSD**: the subjects' images are shown three times each in a random order, 750 trials per session; voxels
  sit at the nsdgeneral positions of a small 1.8-mm volume (the rest of the volume is noise), and every
  session adds its own per-voxel offset and gain to the betas, which per-session z-scoring removes.
* **MEG / EEG** (:mod:`mindvis.world.meeg`): the task subjects' voxel responses drive dipoles per
  visual area with area-specific time courses, seen through a lead field at MEG helmet or EEG 10-20 positions,
  written as THINGS-MEG (continuous FIF runs) and THINGS-EEG2 (preprocessed ``.npy``) releases.
* **Resting state** (HCP): spontaneous activity drives the same encoding model (RFs, tunings, nonlinearity and
  noise sources) with spatially
  smooth random feature maps and a random category vector that evolve as AR(1) processes (time
  constant ``rest_tau_s``), plus temporally autocorrelated noise and a global signal; TR 0.72 s.

All subjects draw their voxels from this one process (HCP subjects share a template and differ by
``subject_variability``), so what a model learns from the resting state transfers in kind, not
voxel by voxel, to the task subjects. Everything is seeded and deterministic.

Modules: :mod:`~mindvis.world.config` (settings and presets), :mod:`~mindvis.world.stimuli` (classes, renders,
features), :mod:`~mindvis.world.brain` (the cortical sheet, areas, responses, noise),
:mod:`~mindvis.world.resting_state`, :mod:`~mindvis.world.meeg` (dipoles, lead field, sensors),
:mod:`~mindvis.world.synthetic_world` (:class:`SyntheticWorld`, which writes the releases through
:mod:`mindvis.world.writers`, one module per release) and :mod:`~mindvis.world.cache` (the cached world).
"""
from .cache import ensure_world
from .config import DEVICE_PRESETS, WORLD_PRESETS, SyntheticWorldConfig, describe_devices, device_overrides
from .synthetic_world import SyntheticWorld

__all__ = ["DEVICE_PRESETS", "WORLD_PRESETS", "SyntheticWorld", "SyntheticWorldConfig", "describe_devices",
           "device_overrides", "ensure_world"]
