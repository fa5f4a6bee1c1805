"""`FARPipeline`: class-conditional next-frequency image generation (FAR) with a diffusers VAE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..hub import build_model_card, push_folder_to_hub
from ..models.far import FARTransformer, check_scheduler
from ..spectral import far_level_schedule, frequency_filter
from .pipeline_spectralar import LIBRARY_NAME, SpectralARPipeline

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class FARPipelineOutput(ImagePipelineOutput):
    """Output of [`FARPipeline`].

    Args:
        images: `B` PIL images, or an array / tensor `(B, H, W, C)` / `(B, C, H, W)` in [0, 1] (with
            `output_type="latent"`: the latents, as `latents`).
        latents (`torch.FloatTensor` of shape `(B, C, h, w)`): the generated latents, in the transformer's scaled
            latent space (the VAE decodes `latents / scaling_factor`).
        intermediates: with `return_intermediates=True`, one entry per outer step: the image decoded from the latent
            sampled at that step, filtered to the next step's input level (the coarse-to-fine strip of FAR's
            Fig. 12); the last entry is the final image.
    """

    latents: torch.FloatTensor | None = None
    intermediates: list | None = None


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel of a diffusers `AutoencoderKL`: `2 ** (number of blocks - 1)`."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def check_components(vae: AutoencoderKL, transformer: FARTransformer, scheduler: DDPMScheduler) -> None:
    """Raise `ValueError` when the three components cannot work together (the VAE config is the truth)."""
    if not isinstance(vae, AutoencoderKL) or not isinstance(transformer, FARTransformer):
        raise ValueError(f"FARPipeline needs a diffusers AutoencoderKL and a FARTransformer, got "
                         f"{type(vae).__name__} and {type(transformer).__name__}.")
    config = transformer.config
    if vae.config.latent_channels != config.latent_channels:
        raise ValueError(f"The transformer's latent_channels {config.latent_channels} differ from the VAE's "
                         f"latent_channels {vae.config.latent_channels}; train the transformer on this VAE's latents.")
    sample_size = vae.config.sample_size
    sample_size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    factor = vae_scale_factor(vae)
    if sample_size % factor != 0 or sample_size // factor != config.latent_size:
        raise ValueError(f"The VAE makes {sample_size // factor}x{sample_size // factor} latents from "
                         f"{sample_size}px images (downsampling {factor}) but the transformer expects latent_size "
                         f"{config.latent_size}.")
    check_scheduler(scheduler, config)


class FARPipeline(DiffusionPipeline):
    r"""
    Class-conditional image generation with FAR (frequency progressive autoregression, continuous tokens): the
    transformer and its diffusion head generate VAE latents from low to high frequency, the VAE decodes them.

    Args:
        vae ([`~diffusers.AutoencoderKL`]): the continuous tokenizer (its `config.scaling_factor` maps its latents to
            the transformer's latent space).
        transformer ([`FARTransformer`]): the next-frequency predictor with its diffusion head.
        scheduler ([`~diffusers.DDPMScheduler`]): the head's noise schedule (cosine, 1000 steps, learned-range
            variance; `build_noise_scheduler(transformer.config)`).

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import FARPipeline
    >>> pipe = FARPipeline.from_pretrained("checkpoints/far-fashion-mnist")
    >>> out = pipe(["Sneaker", "Bag"], guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
    ...            return_intermediates=True)
    >>> out.images[0].save("sneaker.png")
    ```
    """

    model_cpu_offload_seq = "transformer->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vae: AutoencoderKL, transformer: FARTransformer, scheduler: DDPMScheduler):
        super().__init__()
        check_components(vae, transformer, scheduler)
        self.register_modules(vae=vae, transformer=transformer, scheduler=scheduler)

    # ------------------------------------------------------------------ registration (model_index.json)

    def register_modules(self, **kwargs) -> None:
        """vae / scheduler as diffusers records them (`["diffusers", ...]`); the transformer as
        `["spectralar_hf", "FARTransformer"]` so `from_pretrained` survives refactors."""
        for name, module in kwargs.items():
            if name == "transformer":
                library = (None, None) if module is None else (LIBRARY_NAME, type(module).__name__)
                self.register_to_config(**{name: library})
                object.__setattr__(self, name, module)
            else:
                super().register_modules(**{name: module})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("vae", "transformer", "scheduler") and name in self.__dict__:
            parts = {key: getattr(self, key) for key in ("vae", "transformer", "scheduler")}
            parts[name] = value
            check_components(**parts)
            self.register_modules(**{name: value})
            return
        super().__setattr__(name, value)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def image_processor(self) -> VaeImageProcessor:
        return VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_normalize=True)

    # ------------------------------------------------------------------ labels (the same as SpectralARPipeline)

    labels = SpectralARPipeline.labels
    get_label_ids = SpectralARPipeline.get_label_ids
    _class_ids = SpectralARPipeline._class_ids

    # ------------------------------------------------------------------ generation

    def _sampling_settings(self, **given: Any) -> dict[str, Any]:
        """Explicit arguments win; `None` falls back to the sampling defaults saved in `transformer.config`."""
        config = self.transformer.config
        names = {"num_steps": "num_inference_steps", "mask_schedule": "inference_mask_schedule"}
        return {key: value if value is not None else getattr(config, names.get(key, key))
                for key, value in given.items()}

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents `(B, C, h, w)` -> VAE images `(B, channels, H, W)` in about [-1, 1]."""
        config = self.vae.config
        latents = latents / config.scaling_factor
        if getattr(config, "shift_factor", None) is not None:
            latents = latents + config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype)).sample

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_inference_steps: int | None = None,
        diffusion_steps: str | int | list[int] | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        temperature: float | tuple[float, float] | None = None,
        mask_schedule: str | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["FARPipeline", int, None, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_intermediates: bool = False,
    ) -> FARPipelineOutput | tuple:
        r"""
        Generate images of the given classes.

        Args:
            class_labels: class ids, class names (see `labels` / `get_label_ids`), or a mix; one image per entry.
            num_inference_steps: outer (frequency) steps, in `[1, F]` (default 10, at most F); any number works
                without retraining.
            diffusion_steps: inner diffusion steps of the head per outer step: `"linear"` (frequency-aware, 40 at the
                first level -> 100 at the last), an int (constant), or one int per outer step.
            guidance_scale: classifier-free guidance `g` (`1.0` = off; the head's noise is `g * eps_c - (g - 1) *
                eps_u`, i.e. the paper's `(1 + w) x_c - w x_u` with `w = g - 1`; FAR's default cfg is 3.0).
            guidance_schedule: `"constant"` or `"linear"` (`1 + (g - 1) * (step + 1) / n`).
            temperature: noise temperature of the head, a float or `(start, end)` over the outer steps.
            mask_schedule: `"none"` or `"cosine"` (random input tokens masked on a cosine schedule, the paper's
                inference mask).
            generator: `torch.Generator` for reproducible images.
            output_type: `"pil"`, `"np"` (`(B, H, W, C)` in [0, 1]), `"pt"` (`(B, C, H, W)` in [0, 1]) or `"latent"`
                (no decoding; `images` holds the latents).
            return_dict: return a [`FARPipelineOutput`] instead of a tuple.
            callback_on_step_end: called after every outer step as `callback(pipe, step, None, {"latents": x})`,
                `x` the full latent sampled at that step; returning `{"latents": new}` replaces it before it is
                filtered to the next level.
            callback_on_step_end_tensor_inputs: tensors passed to the callback; only `["latents"]`.
            return_intermediates: also return one image per outer step (coarse-to-fine strip).

        `None` settings come from the sampling defaults saved in `transformer.config`.

        Returns:
            [`FARPipelineOutput`] or `(images,)` / `(images, intermediates)`.
        """
        inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if set(inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs may only contain {self._callback_tensor_inputs}, "
                             f"got {inputs}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        labels = self._class_ids(class_labels)
        settings = self._sampling_settings(num_steps=num_inference_steps, diffusion_steps=diffusion_steps,
                                           guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                                           temperature=temperature, mask_schedule=mask_schedule)
        config = self.transformer.config
        steps_seen: list[torch.Tensor] = []

        with self.progress_bar(total=settings["num_steps"]) as progress:
            def on_step(step: int, level: int, latents: torch.Tensor) -> torch.Tensor | None:
                replaced = None
                if callback_on_step_end is not None:
                    returned = callback_on_step_end(self, step, None, {"latents": latents})
                    if returned is not None and returned.get("latents") is not None:
                        replaced = returned["latents"]
                if return_intermediates:
                    steps_seen.append((replaced if replaced is not None else latents).clone())
                progress.update()
                return replaced

            latents = self.transformer.sample(labels, generator=generator, scheduler=self.scheduler,
                                              callback=on_step, **settings)

        intermediates = None
        if return_intermediates:
            levels = far_level_schedule(settings["num_steps"], config.num_levels)  # the last one is F (identity)
            filtered = [frequency_filter(x, levels[k], config.num_levels, config.filter_kind)
                        for k, x in enumerate(steps_seen)]
            if output_type == "latent":
                intermediates = filtered
            else:
                decoded = self.decode_latents(torch.cat(filtered)).split(latents.shape[0])
                intermediates = [self.image_processor.postprocess(chunk, output_type=output_type)
                                 for chunk in decoded]
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(self.decode_latents(latents), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, intermediates) if return_intermediates else (images,)
        return FARPipelineOutput(images=images, latents=latents, intermediates=intermediates)

    # ------------------------------------------------------------------ VAE conveniences

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images (PIL, NumPy `(B, H, W, C)` or tensors `(B, C, H, W)` in [0, 1]) -> scaled latents (the posterior
        mean times `scaling_factor`, minus `shift_factor` when set): what the transformer is trained on."""
        size = self.vae.config.sample_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        pixels = self.image_processor.preprocess(images, height=size, width=size, resize_mode="crop")
        channels = self.vae.config.in_channels
        if pixels.shape[1] == 3 and channels == 1:
            pixels = pixels.mean(dim=1, keepdim=True)
        elif pixels.shape[1] == 1 and channels == 3:
            pixels = pixels.expand(-1, 3, -1, -1)
        latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent_dist.mean
        shift = getattr(self.vae.config, "shift_factor", None)
        return (latents - (shift or 0.0)) * self.vae.config.scaling_factor

    # ------------------------------------------------------------------ Hub

    def model_card(self, repo_id: str, datasets: list[str] | None = None, metrics: dict[str, float] | None = None,
                   summary: str | None = None):
        """Our model card for this pipeline (`huggingface_hub.ModelCard`)."""
        return build_model_card(repo_id, datasets=datasets, metrics=metrics,
                                summary=summary or "A FAR (next-frequency prediction) image generator.",
                                far_config=self.transformer.config, vae_config=self.vae.config)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        datasets: list[str] | None = None,
        metrics: dict[str, float] | None = None,
        summary: str | None = None,
    ) -> str:
        """Upload the pipeline (model_index.json, vae/, transformer/, scheduler/) with our model card; returns the
        commit URL."""
        card = self.model_card(repo_id, datasets=datasets, metrics=metrics, summary=summary)
        return push_folder_to_hub(self.save_pretrained, repo_id, card, token=token, private=private,
                                  commit_message=commit_message, revision=revision, create_pr=create_pr)
