"""The models ``mindvis-distill`` distils: what distillation needs of a fine-tuned DC-LDM (``DCLDMTeacher``) or of an
embedding-conditioned generator (``GeneratorTeacher``), which kind a folder holds, and its run's config."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch


class Teacher:
    """What distillation needs of a model: its UNet's noise prediction under a condition, a null condition, encoding,
    decoding, sampling and saving a student of the same kind."""

    kind: str
    unet: torch.nn.Module
    scheduler_config: dict
    input_key: str  # the batch key the condition is computed from

    def eps(self, unet, x, t, cond):
        raise NotImplementedError

    def condition(self, inputs: torch.Tensor):
        raise NotImplementedError

    def null(self, n: int):
        raise NotImplementedError


def _repeat(cond, n: int):
    return tuple(None if c is None else c.expand(n, *c.shape[1:]) for c in cond)


class DCLDMTeacher(Teacher):
    kind = "dcldm"
    input_key = "fmri"

    def __init__(self, model, null: str, mean_fmri: torch.Tensor):
        self.model = model.eval().requires_grad_(False)
        self.unet, self.scheduler_config = model.unet, model.scheduler_config
        with torch.no_grad():
            ctx, temb = model.condition(mean_fmri.view(1, 1, -1))
            if null == "zero_context":
                ctx, temb = torch.zeros_like(ctx), None if temb is None else torch.zeros_like(temb)
        self._null = (ctx, temb)

    def eps(self, unet, x, t, cond):
        context, time_emb = cond
        return unet(x, t, encoder_hidden_states=context, class_labels=time_emb).sample

    def condition(self, inputs):
        return self.model.condition(inputs)

    def null(self, n):
        return _repeat(self._null, n)

    def encode(self, images):
        return self.model.encode_images(images)

    def decode(self, latents):
        return self.model.decode_latents(latents)

    def student(self, unet, sampler_config: dict):
        from mindvis.models.dc_ldm import DCLDM

        m = self.model
        return DCLDM(unet, m.vae, m.conditioner, m.scheduler_config, sampler_config)

    def student_samples(self, unet, sampler_config, inputs, num_samples, steps, seed):
        from mindvis.pipelines import MindVisPipeline

        return MindVisPipeline(self.student(unet, sampler_config))(inputs, num_samples=num_samples,
                                                                    num_inference_steps=steps, scheduler="lcm",
                                                                    seed=seed, batch_size=64)

    def save_student(self, unet, sampler_config: dict, folder: Path) -> None:
        self.student(unet, sampler_config).save_pretrained(folder)


class GeneratorTeacher(Teacher):
    kind = "generator"
    input_key = "embedding"

    def __init__(self, folder: Path):
        from mindvis.models.embedding_conditioner import EmbeddingConditioner
        from mindvis.pipelines.embedding_pipeline import load_generator_parts

        self.folder = folder
        self.unet, self.vae, self.scheduler_config = load_generator_parts(folder)
        self.unet.requires_grad_(False)
        self.vae.requires_grad_(False)
        self.conditioner = EmbeddingConditioner.from_pretrained(folder / "embedding_conditioner").eval()
        self.conditioner.requires_grad_(False)

    def eps(self, unet, x, t, cond):
        return unet(x, t, encoder_hidden_states=cond[0]).sample

    def condition(self, inputs):
        return (self.conditioner(inputs),)

    def null(self, n):
        return (self.conditioner.null.expand(n, 1, -1),)

    def encode(self, images):
        return self.vae.encode(images).latents * self.vae.config.scaling_factor

    def decode(self, latents):
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def student_samples(self, unet, sampler_config, inputs, num_samples, steps, seed):
        from mindvis.pipelines.embedding_pipeline import EmbeddingToImagePipeline

        pipe = EmbeddingToImagePipeline(unet, self.vae, self.conditioner, self.scheduler_config, sampler_config)
        return pipe(inputs, num_samples=num_samples, num_inference_steps=steps, scheduler="lcm", seed=seed)

    def save_student(self, unet, sampler_config: dict, folder: Path) -> None:
        import shutil

        from diffusers import DDPMScheduler

        from mindvis.models.dc_ldm import save_sampler

        folder = Path(folder)
        unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        DDPMScheduler(**{k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}).save_pretrained(
            folder / "scheduler")
        self.conditioner.save_pretrained(folder / "embedding_conditioner")
        if (self.folder / "prior_config.yaml").is_file():
            shutil.copy2(self.folder / "prior_config.yaml", folder / "prior_config.yaml")
        save_sampler(self.scheduler_config, sampler_config, folder / "sampler")


def teacher_kind(path: str | Path) -> str:
    """``generator`` for an embedding-conditioned generator folder, ``dcldm`` for a DC-LDM (run) folder."""
    p = Path(path)
    if (p / "embedding_conditioner" / "config.json").is_file():
        return "generator"
    from mindvis.pipelines.sample_cli import resolve_model_dir

    resolve_model_dir(p)  # a FileNotFoundError naming what is missing
    return "dcldm"


def teacher_run_config(path: str | Path) -> Path | None:
    """The ``config.yaml`` of the mindvis-finetune run a DC-LDM teacher comes from (None if there is none)."""
    from mindvis.pipelines.sample_cli import resolve_model_dir

    cfg = resolve_model_dir(path).parent / "config.yaml"
    return cfg if cfg.is_file() else None


def _fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, v in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
