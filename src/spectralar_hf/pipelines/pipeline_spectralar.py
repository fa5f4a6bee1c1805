"""`SpectralARPipeline`: class-conditional spectral autoregressive image generation (tokenizer + generator)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from ..hub import build_model_card, push_folder_to_hub
from ..models.generator import SpectralARForCausalLM
from ..models.tokenizer import SpectralTokenizer

LIBRARY_NAME = "spectralar_hf"
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list


@dataclass
class SpectralARPipelineOutput(ImagePipelineOutput):
    """Output of [`SpectralARPipeline`].

    Args:
        images: `B` PIL images, or an array / tensor `(B, H, W, C)` / `(B, C, H, W)` in [0, 1].
        codes (`torch.LongTensor` of shape `(B, k)`): the generated spectral codes.
        intermediates: with `return_intermediates=True`, one entry per autoregressive step: the images decoded from
            the codes generated so far (the coarse-to-fine strip of Figure 1), same format as `images`; the last entry
            equals `images`.
    """

    codes: torch.LongTensor | None = None
    intermediates: list | None = None


@dataclass
class SuperResolutionOutput(ImagePipelineOutput):
    """Output of [`SpectralARPipeline.super_resolve`].

    Args:
        images: the `scale`x larger images.
        codes (`torch.LongTensor` of shape `(B * scale**2, N)`): codes of every sub-image after completion.
        kept_tokens (`int`): length of the low-frequency prefix kept from each sub-image's own encoding.
    """

    codes: torch.LongTensor | None = None
    kept_tokens: int | None = None


def check_components(tokenizer: SpectralTokenizer, transformer: SpectralARForCausalLM) -> None:
    """Raise `ValueError` when the generator cannot drive the tokenizer (the tokenizer config is the truth)."""
    if not isinstance(tokenizer, SpectralTokenizer) or not isinstance(transformer, SpectralARForCausalLM):
        raise ValueError(f"SpectralARPipeline needs a SpectralTokenizer and a SpectralARForCausalLM, got "
                         f"{type(tokenizer).__name__} and {type(transformer).__name__}.")
    t, g = tokenizer.config, transformer.config
    if g.vocab_size != t.codebook_size:
        raise ValueError(f"The generator's vocab_size {g.vocab_size} differs from the tokenizer's codebook_size "
                         f"{t.codebook_size}; train the generator on this tokenizer's codes.")
    if g.num_image_tokens != t.num_latent_tokens:
        raise ValueError(f"The generator's num_image_tokens {g.num_image_tokens} differs from the tokenizer's "
                         f"num_latent_tokens {t.num_latent_tokens}; both must describe the same sequence.")
    if t.num_latent_tokens % g.tokens_per_step != 0:
        raise ValueError(f"tokens_per_step {g.tokens_per_step} does not divide the tokenizer's "
                         f"{t.num_latent_tokens} tokens.")
    if g.image_size is not None and g.image_size != t.image_size:
        raise ValueError(f"The generator was trained for {g.image_size}px images but the tokenizer makes "
                         f"{t.image_size}px images.")
    if g.num_channels is not None and g.num_channels != t.num_channels:
        raise ValueError(f"The generator was trained for {g.num_channels}-channel images but the tokenizer has "
                         f"{t.num_channels} channels.")


class SpectralARPipeline(DiffusionPipeline):
    r"""
    Class-conditional image generation with SpectralAR: the transformer samples spectral codes coarse to fine, the
    tokenizer decodes them.

    Args:
        tokenizer ([`SpectralTokenizer`]): the Nested Spectral Tokenizer (its config holds the omega schedule).
        transformer ([`SpectralARForCausalLM`]): the class-conditional generator of its codes.

    Example:

    ```python
    >>> import torch
    >>> from spectralar_hf import SpectralARPipeline
    >>> pipe = SpectralARPipeline.from_pretrained("checkpoints/spectralar-fashion-mnist")
    >>> out = pipe(["Sneaker", "Bag"], generator=torch.Generator().manual_seed(0), return_intermediates=True)
    >>> out.images[0].save("sneaker.png")
    ```
    """

    model_cpu_offload_seq = "transformer->tokenizer"
    _callback_tensor_inputs = ["codes"]

    def __init__(self, tokenizer: SpectralTokenizer, transformer: SpectralARForCausalLM):
        super().__init__()
        check_components(tokenizer, transformer)
        self.register_modules(tokenizer=tokenizer, transformer=transformer)

    # ------------------------------------------------------------------ registration (model_index.json)

    def register_modules(self, **kwargs) -> None:
        """Record components as `["spectralar_hf", ClassName]` so `from_pretrained` survives refactors."""
        for name, module in kwargs.items():
            library = (None, None) if module is None else (LIBRARY_NAME, type(module).__name__)
            self.register_to_config(**{name: library})
            object.__setattr__(self, name, module)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("tokenizer", "transformer") and name in self.__dict__:
            tokenizer = value if name == "tokenizer" else self.tokenizer
            transformer = value if name == "transformer" else self.transformer
            check_components(tokenizer, transformer)
            self.register_modules(**{name: value})
            return
        super().__setattr__(name, value)

    @property
    def image_processor(self) -> VaeImageProcessor:
        return VaeImageProcessor(vae_scale_factor=1, do_resize=True, do_normalize=True,
                                 do_convert_grayscale=self.tokenizer.config.num_channels == 1)

    # ------------------------------------------------------------------ labels

    @property
    def labels(self) -> dict[str, int]:
        """Class name (each comma-separated synonym of `transformer.config.id2label`) -> class id."""
        names: dict[str, int] = {}
        for index, value in (self.transformer.config.id2label or {}).items():
            for name in str(value).split(","):
                names[name.strip()] = int(index)
        return dict(sorted(names.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Map class names (e.g. ImageNet-1k names, or the names of a custom label set) to class ids."""
        labels = [label] if isinstance(label, str) else list(label)
        known = self.labels
        for name in labels:
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=5)
                raise ValueError(f"{name!r} is not a class of this model" + (f"; did you mean {close}?" if close else
                                 f"; known classes: {list(known)[:20]}{' ...' if len(known) > 20 else ''}."))
        return [known[name] for name in labels]

    def _class_ids(self, class_labels: int | str | list | torch.Tensor) -> torch.LongTensor:
        if isinstance(class_labels, torch.Tensor):
            values = class_labels.flatten().tolist()
        elif isinstance(class_labels, (int, str, np.integer)):
            values = [class_labels]
        else:
            values = list(class_labels)
        ids = [self.get_label_ids(value)[0] if isinstance(value, str) else int(value) for value in values]
        return torch.tensor(ids, dtype=torch.long, device=self._execution_device)

    # ------------------------------------------------------------------ generation

    def _sampling_settings(self, **given: Any) -> dict[str, Any]:
        """Explicit arguments win; `None` falls back to `transformer.generation_config` (saved with the model)."""
        defaults = self.transformer.generation_config
        fallback = {"guidance_scale": 1.0, "guidance_schedule": "constant", "temperature": 1.0, "top_k": None,
                    "top_p": None}
        settings = {}
        for name, value in given.items():
            settings[name] = value if value is not None else getattr(defaults, name, None)
            if settings[name] is None:
                settings[name] = fallback[name]
        if settings["top_p"] is not None and settings["top_p"] >= 1.0:
            settings["top_p"] = None
        if settings["top_k"] == 0:  # GenerationConfig's "no top-k"
            settings["top_k"] = None
        return settings

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_tokens: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["SpectralARPipeline", int, None, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_intermediates: bool = False,
    ) -> SpectralARPipelineOutput | tuple:
        r"""
        Generate images of the given classes.

        Args:
            class_labels: class ids, class names (see `labels` / `get_label_ids`), or a mix; one image per entry.
            guidance_scale: classifier-free guidance `w` (`1.0` = off; logits `w * cond - (w - 1) * uncond`, VAR's
                `cfg = w - 1`). `None` uses `transformer.generation_config`.
            guidance_schedule: `"constant"` or `"linear"` (VAR's ramp from no guidance at the first step).
            temperature, top_k, top_p: sampling filters; `None` uses `transformer.generation_config`.
            num_tokens: generate only the first `num_tokens` codes and decode them (truncated generation, Table 3).
            generator: `torch.Generator` for reproducible images.
            output_type: `"pil"`, `"np"` (`(B, H, W, C)` in [0, 1]) or `"pt"` (`(B, C, H, W)` in [0, 1]).
            return_dict: return a [`SpectralARPipelineOutput`] instead of a tuple.
            callback_on_step_end: called after every step as `callback(pipe, step, None, {"codes": codes_so_far})`
                (diffusers' convention; there is no timestep). Returning modified codes is not supported.
            callback_on_step_end_tensor_inputs: tensors passed to the callback; only `["codes"]`.
            return_intermediates: also return the image decoded after each step (coarse-to-fine strip).

        Returns:
            [`SpectralARPipelineOutput`] or `(images,)` / `(images, intermediates)`.
        """
        inputs = callback_on_step_end_tensor_inputs or ["codes"]
        if set(inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs may only contain {self._callback_tensor_inputs}, "
                             f"got {inputs}.")
        labels = self._class_ids(class_labels)
        settings = self._sampling_settings(guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                                           temperature=temperature, top_k=top_k, top_p=top_p)
        config = self.transformer.config
        total = num_tokens if num_tokens is not None else config.num_image_tokens

        with self.progress_bar(total=max(total // config.tokens_per_step, 1)) as progress:
            def on_step(step: int, codes: torch.LongTensor) -> None:
                progress.update()
                if callback_on_step_end is not None:
                    returned = callback_on_step_end(self, step, None, {"codes": codes})
                    if returned is not None and returned.get("codes", codes) is not codes:
                        raise ValueError("callback_on_step_end may not replace codes: earlier codes are cached.")

            codes = self.transformer.sample(labels, num_tokens=num_tokens, generator=generator, callback=on_step,
                                            **settings)

        images = self.tokenizer.decode(codes).reconstruction
        intermediates = self._decode_steps(codes, output_type) if return_intermediates else None
        images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, intermediates) if return_intermediates else (images,)
        return SpectralARPipelineOutput(images=images, codes=codes, intermediates=intermediates)

    def _decode_steps(self, codes: torch.LongTensor, output_type: str, batch_size: int = 64) -> list:
        """Images after each step: every prefix `step * tokens_per_step` decoded in batched passes."""
        step_size = self.transformer.config.tokens_per_step
        prefixes = torch.arange(step_size, codes.shape[1] + 1, step_size, device=codes.device)
        batch = codes.shape[0]
        all_codes = codes.repeat(len(prefixes), 1)  # step-major: rows [s * B, (s + 1) * B) are step s
        all_prefixes = prefixes.repeat_interleave(batch)
        decoded = torch.cat([
            self.tokenizer.decode(all_codes[i : i + batch_size], all_prefixes[i : i + batch_size]).reconstruction
            for i in range(0, all_codes.shape[0], batch_size)
        ])
        return [self.image_processor.postprocess(chunk, output_type=output_type) for chunk in decoded.split(batch)]

    # ------------------------------------------------------------------ tokenizer conveniences

    def _preprocess(self, images: ImageInput) -> torch.Tensor:
        """PIL / NumPy / tensors (values in [0, 1] for arrays and tensors) -> `(B, C, S, S)` in [-1, 1]."""
        size = self.tokenizer.config.image_size
        pixel_values = self.image_processor.preprocess(images, height=size, width=size, resize_mode="crop")
        channels = self.tokenizer.config.num_channels
        if pixel_values.shape[1] == 3 and channels == 1:
            pixel_values = pixel_values.mean(dim=1, keepdim=True)
        elif pixel_values.shape[1] == 1 and channels == 3:
            pixel_values = pixel_values.expand(-1, 3, -1, -1)
        return pixel_values.to(device=self._execution_device, dtype=self.tokenizer.dtype)

    @torch.no_grad()
    def encode(self, images: ImageInput) -> torch.LongTensor:
        """Images (PIL, NumPy `(B, H, W, C)` or tensors `(B, C, H, W)` in [0, 1]) -> `(B, N)` spectral codes."""
        return self.tokenizer.encode(self._preprocess(images)).codes

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor, num_tokens: int | torch.Tensor | None = None,
               output_type: str = "pil"):
        """Decode the first `num_tokens` codes (int or per-sample `(B,)` tensor) to images of `output_type`."""
        return self.image_processor.postprocess(self.tokenizer.decode(codes, num_tokens).reconstruction,
                                                output_type=output_type)

    @torch.no_grad()
    def reconstruct(self, images: ImageInput, num_tokens: int | torch.Tensor | None = None,
                    output_type: str = "pil"):
        """Encode then decode the first `num_tokens` codes: the image seen through a spectral prefix."""
        return self.decode(self.encode(images), num_tokens, output_type)

    # ------------------------------------------------------------------ super-resolution (§4.4)

    @torch.no_grad()
    def super_resolve(
        self,
        image: ImageInput,
        scale: int = 2,
        method: str = "stride",
        class_labels: int | str | list | torch.Tensor | None = None,
        keep_tokens: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
    ) -> SuperResolutionOutput:
        r"""
        Super-resolution by spectral completion (SpectralAR §4.4, Table 3).

        Each `S x S` image is split into `scale**2` sub-images of `S / scale` pixels (`"stride"`: the pixels
        `[i::scale, j::scale]`; `"patch"`: tiles), each sub-image is upsampled back to `S`, encoded, its low-frequency
        prefix is kept (the frequencies an upsampled image really carries: tokens with `omega_k <= S / scale`, rounded
        down to whole steps, unless `keep_tokens` is given), the remaining codes are completed autoregressively
        (conditioned on `class_labels`, or the null class), decoded, and the `S x S` results reassembled into one
        `scale * S` image.
        """
        if method not in ("stride", "patch"):
            raise ValueError(f"method must be 'stride' or 'patch', got {method!r}.")
        size = self.tokenizer.config.image_size
        if not isinstance(scale, int) or scale < 2 or size % scale != 0:
            raise ValueError(f"scale must be an int >= 2 that divides the image size {size}, got {scale!r}.")
        pixels = self._preprocess(image)
        batch, channels = pixels.shape[:2]
        sub = size // scale
        if method == "stride":  # (B, C, sub, scale, sub, scale) -> sub-image (i, j) holds pixels [i::scale, j::scale]
            parts = pixels.view(batch, channels, sub, scale, sub, scale).permute(0, 3, 5, 1, 2, 4)
        else:  # tiles: (B, C, scale, sub, scale, sub)
            parts = pixels.view(batch, channels, scale, sub, scale, sub).permute(0, 2, 4, 1, 3, 5)
        parts = parts.reshape(batch * scale * scale, channels, sub, sub)
        upsampled = torch.nn.functional.interpolate(parts.float(), size=(size, size), mode="bicubic",
                                                    align_corners=False).clamp(-1, 1).to(parts.dtype)

        config = self.transformer.config
        keep = keep_tokens if keep_tokens is not None else sum(w <= sub for w in self.tokenizer.config.omega)
        keep = keep - keep % config.tokens_per_step
        if not 0 <= keep <= config.num_image_tokens:
            raise ValueError(f"keep_tokens must lie in [0, {config.num_image_tokens}], got {keep_tokens}.")
        if class_labels is None:
            if not config.has_null_class:
                raise ValueError("This generator has no null class (trained without class dropout): pass "
                                 "class_labels for the image(s).")
            labels = torch.full((batch,), config.null_class_id, device=self._execution_device)
        else:
            labels = self._class_ids(class_labels)
            if labels.shape[0] == 1 and batch > 1:
                labels = labels.expand(batch)
            if labels.shape[0] != batch:
                raise ValueError(f"Give one class label per image ({batch}), got {labels.shape[0]}.")
        labels = labels.repeat_interleave(scale * scale)
        settings = self._sampling_settings(guidance_scale=guidance_scale, guidance_schedule=None,
                                           temperature=temperature, top_k=top_k, top_p=top_p)
        prefix = self.tokenizer.encode(upsampled).codes[:, :keep]
        codes = self.transformer.sample(labels, prefix_codes=prefix, generator=generator, **settings)
        refined = self.tokenizer.decode(codes).reconstruction  # (B * scale^2, C, S, S)

        refined = refined.view(batch, scale, scale, channels, size, size)
        if method == "stride":
            output = refined.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels, size * scale, size * scale)
        else:
            output = refined.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, size * scale, size * scale)
        images = self.image_processor.postprocess(output, output_type=output_type)
        return SuperResolutionOutput(images=images, codes=codes, kept_tokens=keep)

    # ------------------------------------------------------------------ Hub

    def model_card(self, repo_id: str, datasets: list[str] | None = None, metrics: dict[str, float] | None = None,
                   summary: str | None = None):
        """Our model card for this pipeline (`huggingface_hub.ModelCard`)."""
        return build_model_card(repo_id, self.tokenizer.config, self.transformer.config, datasets=datasets,
                                metrics=metrics, summary=summary)

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
        """Upload the pipeline (model_index.json, tokenizer/, transformer/) with our model card; returns the commit
        URL."""
        card = self.model_card(repo_id, datasets=datasets, metrics=metrics, summary=summary)
        return push_folder_to_hub(self.save_pretrained, repo_id, card, token=token, private=private,
                                  commit_message=commit_message, revision=revision, create_pr=create_pr)
