"""MindEye1's image stage against the reference's own ``utils.reconstruction`` (tools/reference_fixtures/
mindeye1_recon.py: diffusers 0.13's dual-guided UNet with Reconstructions.py's mix ratio 0, UniPC from Versatile
Diffusion's scheduler config, img2img at 0.85 from the blurry image, best of N by token similarity)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def parts():
    from mindvis.compat.mindeye import load_mindeye1
    from mindvis.pipelines.mindeye_generators import VersatileImageGenerator

    r = np.load(FIX / "mindeye1_recon" / "reference_outputs.npz")
    ck = load_mindeye1(FIX / "mindeye1" / "prior" / "last.pth")
    gen = VersatileImageGenerator.from_pretrained(FIX / "mindeye1_recon" / "vd_tiny")
    w, b = torch.from_numpy(r["embed_w"]), torch.from_numpy(r["embed_b"])

    def embed(x):  # the fixture's stand-in for Clipper.embed_image (4 tokens)
        return F.adaptive_avg_pool2d(F.conv2d(x.float(), w, b, stride=4), 2).flatten(2).transpose(1, 2)

    return r, ck.network, ck.prior, gen, embed


def test_blurry_decoding_is_the_references(parts):
    r, _, _, gen, _ = parts
    from mindvis.pipelines.mindeye_lowlevel import BlurryDecoder

    blurry = BlurryDecoder(gen.vae)(torch.from_numpy(r["ae_preds"]), clamp=False)
    assert np.abs(blurry.numpy() - r["blurry"]).max() < 1e-5


@pytest.mark.parametrize("name,row", [("img2img", 0), ("noise", 1)])
def test_candidates_and_best_pick_equal_the_reference(parts, name, row):
    """The image UNet alone on the prior's tokens (no prompt part) equals the dual-guided UNet at mix ratio 0; the
    draws (the VAE posterior sample, the noise) follow the prior's on the image's one generator."""
    from mindvis.pipelines.mindeye_recon import mindeye1_best_of, mindeye1_reconstruct

    r, net, prior, gen, embed = parts
    n, seed = int(r[f"{name}_n"]), int(r[f"{name}_seed"])
    blurry = torch.from_numpy(r["blurry"]) if name == "img2img" else None
    with torch.no_grad():
        tokens = net.forward_backbone(torch.from_numpy(r["voxel"])[[row]])
        proj = net.forward_projector(tokens)
    g = torch.Generator().manual_seed(seed)
    ours = prior.sample(tokens.repeat(n, 1, 1), generator=g)  # advances the generator as the reference's prior
    # the 100 ancestral steps amplify float rounding between torch versions (mindeye-nets.md 7): within 1e-3 here
    assert np.abs(ours.numpy() - r[f"{name}_prior"]).max() < 1e-3
    cand = mindeye1_reconstruct(gen, torch.from_numpy(r[f"{name}_prior"]), blurry, 20, 3.5, 0.85, g)
    ref = r[f"{name}_recons"][0]
    assert cand.shape == ref.shape and np.abs(cand.numpy() - ref).max() < 1e-5
    sims = mindeye1_best_of(cand, proj[0], embed)
    assert np.abs(sims.numpy() - r[f"{name}_sims"]).max() < 1e-6
    assert int(np.nanargmax(sims.numpy())) == int(r[f"{name}_best"][0])
    # the whole chain from mindvis' own prior samples stays close (the prior's drift, not the image stage)
    g2 = torch.Generator().manual_seed(seed)
    full = mindeye1_reconstruct(gen, prior.sample(tokens.repeat(n, 1, 1), generator=g2), blurry, 20, 3.5, 0.85, g2)
    assert np.abs(full.numpy() - ref).max() < 2e-2


def test_unipc_lands_on_the_first_alpha_as_diffusers_0_13(parts):
    """Diffusers 0.13's UniPC ends on alphas_cumprod[0]; today's default ('zero') would end on 1."""
    gen = parts[3]
    s = gen.unipc()
    s.set_timesteps(20)
    assert s.config.final_sigmas_type == "sigma_min" and int(s.timesteps[0]) == 999 and int(s.timesteps[-1]) == 50
    ac0 = gen.alphas_cumprod[0]
    assert float(s.sigmas[-1]) == pytest.approx(((1 - ac0) / ac0) ** 0.5, rel=1e-4)
