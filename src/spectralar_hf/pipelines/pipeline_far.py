"""`FARPipeline`: class- or text-conditional next-frequency image generation (FAR) with a diffusers VAE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..hub import align_loaded_weights, build_model_card, push_folder_to_hub
from ..models.far import FARConfig, FARTransformer, check_scheduler
from ..spectral import frequency_filter
from ..utils import (
    check_callable,
    reject_unknown_arguments,
    check_finite_tensor,
    check_generator,
    check_int,
)
from .pipeline_spectralar import (
    LIBRARY_NAME,
    SpectralARPipeline,
    _CheckedLoading,
    _HubNativeFolder,
    _OtherPipelineMethods,
    check_output_type,
    postprocess_images,
    preprocess_images,
)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
COMPONENTS = ("vae", "transformer", "scheduler", "text_encoder", "tokenizer")
NO_MAX_LENGTH = 1_000_000  # tokenizers without a real limit report model_max_length = 1e30


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


def check_components(vae: AutoencoderKL, transformer: FARTransformer, scheduler: DDPMScheduler,
                     text_encoder: PreTrainedModel | None = None,
                     tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Raise `ValueError` when the components cannot work together (the VAE config is the truth for the latents, the
    transformer's `cross_attention_dim` for the text encoder)."""
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
    if (text_encoder is None) != (tokenizer is None):
        raise ValueError("FARPipeline needs both a text_encoder and its tokenizer, or neither (then prompts must come "
                         "as prompt_embeds).")
    if text_encoder is None:
        return
    if not isinstance(text_encoder, PreTrainedModel) or not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise ValueError(f"text_encoder must be a transformers PreTrainedModel and tokenizer a transformers tokenizer, "
                         f"got {type(text_encoder).__name__} and {type(tokenizer).__name__}.")
    if config.cross_attention_dim is None:
        raise ValueError("The transformer has no cross-attention (cross_attention_dim is None): it is class-"
                         "conditional only and cannot use a text encoder; train it with cross_attention_dim = the "
                         "text encoder's hidden size.")
    hidden_size = getattr(text_encoder.config.get_text_config(), "hidden_size", None)
    if hidden_size is not None and hidden_size != config.cross_attention_dim:
        raise ValueError(f"The text encoder's hidden size {hidden_size} differs from the transformer's "
                         f"cross_attention_dim {config.cross_attention_dim}; use the text encoder it was trained with.")


@torch.no_grad()
def encode_prompt(text_encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str | list[str],
                  max_sequence_length: int | None = None) -> tuple[torch.Tensor, torch.LongTensor]:
    """Tokenize `prompt` (padded on the right to the longest prompt, so a prompt's states do not depend on the
    batch; truncated to `max_sequence_length`, default `tokenizer.model_max_length`) and run the text encoder.

    Returns:
        `(prompt_embeds, prompt_attention_mask)`: the encoder's `last_hidden_state` `(B, T, hidden_size)` over all
        tokens (FAR §5.3) and the `(B, T)` attention mask (1 = real token), on the encoder's device.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
    if not prompts or not all(isinstance(text, str) for text in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}.")
    if max_sequence_length is not None:
        max_sequence_length = check_int("max_sequence_length", max_sequence_length)
    if tokenizer.pad_token is None:
        raise ValueError(f"The tokenizer ({type(tokenizer).__name__}) has no pad token, so prompts of different "
                         f"lengths cannot be batched; set tokenizer.pad_token (e.g. to tokenizer.eos_token).")
    max_length = tokenizer.model_max_length if max_sequence_length is None else max_sequence_length
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_sequence_length must be >= 1, got {max_length}.")
    truncate = max_length is not None and max_length < NO_MAX_LENGTH
    inputs = tokenizer(prompts, padding="longest", padding_side="right", truncation=truncate,
                       max_length=max_length if truncate else None, return_tensors="pt")
    device = text_encoder.device
    output = text_encoder(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))
    states = getattr(output, "last_hidden_state", None)
    if states is None:
        raise ValueError(f"The text encoder ({type(text_encoder).__name__}) returned no last_hidden_state; use a model "
                         f"whose output has it (e.g. AutoModel, T5EncoderModel, not a *ForCausalLM).")
    return states, inputs["attention_mask"].to(device)


class FARPipeline(_OtherPipelineMethods, _CheckedLoading, _HubNativeFolder, DiffusionPipeline):
    r"""
    Class- or text-conditional image generation with FAR (frequency progressive autoregression, continuous tokens):
    the transformer and its diffusion head generate VAE latents from low to high frequency, the VAE decodes them.

    Args:
        vae ([`~diffusers.AutoencoderKL`]): the continuous tokenizer (its `config.scaling_factor` maps its latents to
            the transformer's latent space).
        transformer ([`FARTransformer`]): the next-frequency predictor with its diffusion head.
        scheduler ([`~diffusers.DDPMScheduler`]): the head's noise schedule (cosine, 1000 steps, learned-range
            variance; `build_noise_scheduler(transformer.config)`).
        text_encoder ([`~transformers.PreTrainedModel`], *optional*): for a text-conditional transformer
            (`cross_attention_dim` set, FAR §5.3): any transformers model whose output has `last_hidden_state`
            `(B, T, cross_attention_dim)` (e.g. `BertModel`, `T5EncoderModel`, `Qwen2Model` as in the paper). Frozen;
            only used to encode prompts.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`], *optional*): the text encoder's tokenizer (needs a pad
            token).

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import FARPipeline
    >>> pipe = FARPipeline.from_pretrained("checkpoints/far-fashion-mnist")
    >>> out = pipe(["Sneaker", "Bag"], guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
    ...            return_intermediates=True)
    >>> out.images[0].save("sneaker.png")
    >>> text_pipe = FARPipeline.from_pretrained("runs/far-text/pipeline")  # saved with text_encoder + tokenizer
    >>> image = text_pipe(prompt="a photo of a Sneaker", guidance_scale=3.0).images[0]
    ```
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["text_encoder", "tokenizer"]
    _checked_components = ("vae", "transformer", "scheduler")
    _component_configs = {"FARTransformer": FARConfig}
    _callback_tensor_inputs = ["latents"]
    _other_methods = {
        "reconstruct": "it is a SpectralARPipeline method (spectral tokens); a FAR pipeline round-trips images through "
                       "its VAE with pipe.decode_latents(pipe.encode(images)).",
        "super_resolve": "it is a SpectralARPipeline method (spectral completion of tokens); FAR has no "
                         "super-resolution.",
        "decode": "decode latents to images with pipe.decode_latents(latents) (a SpectralARPipeline decodes codes with "
                  "decode()).",
    }

    def __init__(self, vae: AutoencoderKL, transformer: FARTransformer, scheduler: DDPMScheduler,
                 text_encoder: PreTrainedModel | None = None, tokenizer: PreTrainedTokenizerBase | None = None):
        super().__init__()
        check_components(vae, transformer, scheduler, text_encoder, tokenizer)
        for component in (vae, transformer, text_encoder):  # diffusers keeps safetensors' unaligned CPU tensors
            if component is not None:
                align_loaded_weights(component)
        self.register_modules(vae=vae, transformer=transformer, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer)

    # ------------------------------------------------------------------ registration (model_index.json)

    def register_modules(self, **kwargs) -> None:
        """Record the components in model_index.json: vae / scheduler / text_encoder / tokenizer as diffusers records
        them (`["diffusers", ...]`, `["transformers", ...]`), the transformer as `["spectralar_hf",
        "FARTransformer"]` so `from_pretrained` survives refactors. Absent text components are not recorded, so a
        class-conditional pipeline's model_index.json names only vae, transformer and scheduler."""
        for name, module in kwargs.items():
            recorded = name in getattr(self, "_internal_dict", {})
            if module is None and name in self._optional_components and not recorded:
                object.__setattr__(self, name, None)
                continue
            if module is None:
                library = (None, None)
            elif name == "transformer":
                library = (LIBRARY_NAME, type(module).__name__)
            else:  # what diffusers records: the defining library's top-level package and the class name
                library = (type(module).__module__.split(".")[0], type(module).__name__)
            self.register_to_config(**{name: library})
            object.__setattr__(self, name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in COMPONENTS and name in self.__dict__:
            parts = {key: getattr(self, key) for key in COMPONENTS}
            parts[name] = value
            check_components(**parts)
            self.register_modules(**{name: value})
            return
        super().__setattr__(name, value)

    @property
    def components(self) -> dict[str, Any]:
        """All five components by name (`text_encoder` / `tokenizer` are `None` in a class-conditional pipeline), to
        build another pipeline from the same weights: `FARPipeline(**pipe.components)`."""
        return {name: getattr(self, name) for name in COMPONENTS}

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
    interrupt = SpectralARPipeline.interrupt

    # ------------------------------------------------------------------ text (FAR §5.3)

    def encode_prompt(self, prompt: str | list[str], max_sequence_length: int | None = None
                      ) -> tuple[torch.Tensor, torch.LongTensor]:
        """`encode_prompt(self.text_encoder, self.tokenizer, prompt, max_sequence_length)`: `(prompt_embeds
        (B, T, hidden_size), prompt_attention_mask (B, T))`."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("This pipeline has no text_encoder / tokenizer, so it cannot encode a prompt: build it "
                             "with FARPipeline(..., text_encoder=..., tokenizer=...), or pass prompt_embeds and "
                             "prompt_attention_mask from the text encoder the transformer was trained with.")
        return encode_prompt(self.text_encoder, self.tokenizer, prompt, max_sequence_length)

    def _text_inputs(self, class_labels, prompt, prompt_embeds, prompt_attention_mask, max_sequence_length
                     ) -> dict[str, torch.Tensor]:
        """Check how class labels and text combine for this transformer; the text keyword arguments of `sample`."""
        config = self.transformer.config
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("Pass either prompt or prompt_embeds, not both.")
        if prompt_attention_mask is not None and prompt_embeds is None:
            raise ValueError("prompt_attention_mask was given without prompt_embeds.")
        has_text = prompt is not None or prompt_embeds is not None
        if has_text and not config.is_text_conditional:
            raise ValueError("The transformer has no cross-attention (cross_attention_dim is None): it is class-"
                             "conditional only, so it cannot take prompt / prompt_embeds; pass class_labels.")
        if config.is_text_conditional and not has_text:
            raise ValueError(f"The transformer is text-conditional (cross_attention_dim = "
                             f"{config.cross_attention_dim}): pass prompt (with this pipeline's text encoder) or "
                             f"prompt_embeds and prompt_attention_mask.")
        if class_labels is not None and config.num_classes == 0:
            raise ValueError("The transformer has no classes (num_classes = 0: text-conditional only); pass the text "
                             "as prompt=..., not class_labels.")
        if not has_text:
            return {}
        if prompt is not None:
            prompt_embeds, prompt_attention_mask = self.encode_prompt(prompt, max_sequence_length)
        return {"encoder_hidden_states": prompt_embeds, "encoder_attention_mask": prompt_attention_mask}

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
        channels = self.vae.config.latent_channels
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[1] != channels:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be a (B, {channels}, h, w) tensor (the VAE's latent_channels = "
                             f"{channels}), got {shape}.")
        if not torch.is_floating_point(latents):
            raise ValueError(f"latents must be floating-point, got {latents.dtype}; use `latents.float()`.")
        if latents.shape[0] == 0:
            raise ValueError("latents is an empty batch (0 rows); pass at least one latent.")
        check_finite_tensor("latents", latents, "was the model sampled with a NaN / inf setting, or has its training "
                                                "diverged?")
        return self._decode_latents(latents)

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        latents = latents / config.scaling_factor
        if getattr(config, "shift_factor", None) is not None:
            latents = latents + config.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype)).sample

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        diffusion_steps: str | int | list[int] | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        temperature: float | tuple[float, float] | None = None,
        mask_schedule: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        level_schedule: list[int] | None = None,
        temperature_schedule: str | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[["FARPipeline", int, None, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_intermediates: bool = False,
        prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        num_images_per_prompt: int = 1,
        **kwargs: Any,
    ) -> FARPipelineOutput | tuple:
        r"""
        Generate images of the given classes and/or prompts.

        Args:
            class_labels: class ids, class names (see `labels` / `get_label_ids`), or a mix; one image per entry.
                Required for a class-conditional transformer; for a text-conditional one optional (one per prompt)
                and only when it has classes (`num_classes > 0`).
            num_inference_steps: outer (frequency) steps, in `[1, F]` (default 10, at most F); any number works
                without retraining.
            diffusion_steps: inner diffusion steps of the head per outer step: `"linear"` (frequency-aware, 40 at the
                first level -> 100 at the last), an int (constant), or one int per outer step.
            guidance_scale: classifier-free guidance `g` (`1.0` = off; the head's noise is `g * eps_c - (g - 1) *
                eps_u`, i.e. the paper's `(1 + w) x_c - w x_u` with `w = g - 1`; FAR's default cfg is 3.0).
            guidance_schedule: `"constant"` or `"linear"` (`1 + (g - 1) * step / n`, the reference sampler's ramp).
            temperature: noise temperature of the head, a float or `(start, end)` over the outer steps.
            mask_schedule: `"none"` or `"cosine"` (input tokens masked on a cosine schedule over one random order
                per sample, the paper's inference mask).
            level_schedule: the input level of every outer step, e.g. the reference sampler's
                `[0, 2, 3, 4, 5, 6, 7, 8, 9, 10]` (default: the transformer config's, or an even spread of
                `num_inference_steps`).
            temperature_schedule: `"linear"` or `"cosine"` (the reference sampler's) ramp of a `(start, end)`
                temperature.
            generator: `torch.Generator`, or a list of them, one per image (diffusers' convention): image `b`'s
                randomness then comes from generator `b` only, so it does not depend on the other images or on how
                images are batched (a list of one equals that generator alone).
            output_type: `"pil"`, `"np"` (`(B, H, W, C)` in [0, 1]), `"pt"` (`(B, C, H, W)` in [0, 1]) or `"latent"`
                (no decoding; `images` holds the latents).
            return_dict: return a [`FARPipelineOutput`] instead of a tuple.
            callback_on_step_end: called after every outer step as `callback(pipe, step, None, {"latents": x})`,
                `x` the full latent sampled at that step; returning `{"latents": new}` replaces it before it is
                filtered to the next level. Setting `pipe.interrupt` (or diffusers' `pipe._interrupt`) there stops
                generation after that step: the images are decoded from that step's full latent.
            callback_on_step_end_tensor_inputs: tensors passed to the callback; only `["latents"]`.
            return_intermediates: also return one image per outer step (coarse-to-fine strip).
            prompt: text-conditional transformers only (FAR §5.3): one image per prompt, encoded by `text_encoder`
                (its last hidden layer over all tokens, see `encode_prompt`). With CFG the unconditional rows see
                only the learned null text token (and the null class).
            prompt_embeds: instead of `prompt`: precomputed `(B, T, cross_attention_dim)` text states.
            prompt_attention_mask: `(B, T)` mask of `prompt_embeds` (1 = real token; default all real).
            max_sequence_length: truncate prompts to this many tokens (default `tokenizer.model_max_length`).
            num_images_per_prompt: images per prompt (or per row of `prompt_embeds`), each prompt's images next to
                each other; its class label (when given) is repeated with it. A list of generators then gives one per
                image.

        `None` settings come from the sampling defaults saved in `transformer.config`.

        Returns:
            [`FARPipelineOutput`] or `(images,)` / `(images, intermediates)`.
        """
        reject_unknown_arguments(type(self).__call__, kwargs)
        inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if isinstance(inputs, str) or set(inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs must be a list drawn from "
                             f"{self._callback_tensor_inputs}, got {inputs!r}.")
        check_output_type(output_type, OUTPUT_TYPES)
        check_callable("callback_on_step_end", callback_on_step_end)
        if not isinstance(generator, (list, tuple)):
            check_generator(generator)  # before any prompt encoding; a list is checked against the images below
        num_images_per_prompt = check_int("num_images_per_prompt", num_images_per_prompt, low=1)
        if num_images_per_prompt != 1 and prompt is None and prompt_embeds is None:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt} needs prompt or prompt_embeds; for class "
                             f"labels repeat the labels instead (e.g. [3] * {num_images_per_prompt}).")
        text_inputs = self._text_inputs(class_labels, prompt, prompt_embeds, prompt_attention_mask,
                                        max_sequence_length)
        labels = None if class_labels is None else self._class_ids(class_labels)
        if labels is not None and text_inputs and labels.shape[0] != text_inputs["encoder_hidden_states"].shape[0]:
            raise ValueError(f"class_labels gives {labels.shape[0]} entries but there are "
                             f"{text_inputs['encoder_hidden_states'].shape[0]} prompts; pass one class per prompt.")
        if num_images_per_prompt != 1:  # each prompt's rows next to each other, as diffusers' pipelines repeat them
            text_inputs = {name: value.repeat_interleave(num_images_per_prompt, dim=0)
                           if isinstance(value, torch.Tensor) else value  # (anything else: sample() says what is wrong)
                           for name, value in text_inputs.items()}
            labels = None if labels is None else labels.repeat_interleave(num_images_per_prompt)
        num_images = labels.shape[0] if labels is not None else \
            text_inputs["encoder_hidden_states"].shape[0] if text_inputs else None
        if num_images is not None:  # (no labels and no text: the transformer names the missing class_labels)
            check_generator(generator, num_images)
        if level_schedule is not None and num_inference_steps is None:
            num_inference_steps = len(level_schedule)
        settings = self._sampling_settings(num_steps=num_inference_steps, diffusion_steps=diffusion_steps,
                                           guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                                           temperature=temperature, mask_schedule=mask_schedule,
                                           temperature_schedule=temperature_schedule)
        config = self.transformer.config
        steps_seen: list[tuple[int, torch.Tensor]] = []  # (level it is filtered to, full latent) per outer step
        self._interrupt = False

        with self.progress_bar(total=settings["num_steps"]) as progress:
            def on_step(step: int, level: int, latents: torch.Tensor) -> torch.Tensor | None:
                replaced = None
                if callback_on_step_end is not None:
                    returned = callback_on_step_end(self, step, None, {"latents": latents})
                    if returned is not None and not isinstance(returned, dict):
                        raise TypeError(f"callback_on_step_end must return None or a dict of tensors, got "
                                        f"{type(returned).__name__}.")
                    if returned is not None and returned.get("latents") is not None:
                        replaced = returned["latents"]
                if return_intermediates:
                    steps_seen.append((level, (replaced if replaced is not None else latents).clone()))
                progress.update()
                return replaced

            latents = self.transformer.sample(labels, generator=generator, scheduler=self.scheduler,
                                              callback=on_step, level_schedule=level_schedule,
                                              interrupt=lambda: self.interrupt, **settings, **text_inputs)

        intermediates = None
        if return_intermediates:  # each step's sample at the level it hands on (the last one is F: the identity)
            filtered = [frequency_filter(x, level, config.num_levels, config.filter_kind) for level, x in steps_seen]
            if output_type == "latent":
                intermediates = filtered
            else:
                decoded = self._decode_latents(torch.cat(filtered)).split(latents.shape[0])
                intermediates = [postprocess_images(self.image_processor, chunk, output_type) for chunk in decoded]
        if output_type == "latent":
            images = latents
        else:
            images = postprocess_images(self.image_processor, self._decode_latents(latents), output_type)
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
        pixels = preprocess_images(self.image_processor, images, size, self.vae.config.in_channels,
                                   self._execution_device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mean
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
        """Upload the pipeline (model_index.json, vae/, transformer/, scheduler/, and text_encoder/ + tokenizer/ when
        present) with our model card; returns the commit URL."""
        card = self.model_card(repo_id, datasets=datasets, metrics=metrics, summary=summary)
        return push_folder_to_hub(self.save_pretrained, repo_id, card, token=token, private=private,
                                  commit_message=commit_message, revision=revision, create_pr=create_pr)
