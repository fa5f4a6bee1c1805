"""`SpectralARPipeline`: class-conditional spectral autoregressive image generation (tokenizer + generator)."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import CompileConfig

from ..hub import align_loaded_weights, build_model_card, push_folder_to_hub, save_and_push
from ..models.generator import SpectralARConfig, SpectralARForCausalLM
from ..models.tokenizer import SpectralTokenizer, SpectralTokenizerConfig
from ..remote_code import PIPELINE_MODULES, write_pipeline_module
from ..utils import (
    check_callable,
    reject_unknown_arguments,
    check_generator,
    check_int,
    check_pipeline_directory,
    check_pixel_range,
    local_directory,
)

LIBRARY_NAME = "spectralar_hf"
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list
OUTPUT_TYPES = ("pil", "np", "pt")


def check_output_type(output_type: str, allowed: tuple[str, ...] = OUTPUT_TYPES) -> None:
    if not isinstance(output_type, str) or output_type not in allowed:
        raise ValueError(f"output_type must be one of {allowed}, got {output_type!r}.")


def prepare_image_input(images: ImageInput) -> ImageInput:
    """Validate PIL images, NumPy arrays `(H, W[, C])` / `(B, H, W, C)` or tensors `(C, H, W)` / `(B, C, H, W)` (or a
    list of them): non-empty, floats finite and in [0, 1] (give or take rounding), uint8 in [0, 255]. Returns them in
    [0, 1] for diffusers' image processor: uint8 divided by 255 (diffusers would read 0..255 as floats) and floats
    clipped (diffusers would take a rounding error below 0 as a [-1, 1] image and skip the normalisation)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("images is empty; pass at least one image (PIL image, NumPy array or tensor).")
    prepared = []
    for item in items:
        if isinstance(item, PIL.Image.Image):
            prepared.append(item)
            continue
        if isinstance(item, (str, bytes, os.PathLike)):
            raise TypeError(f"images must be PIL images, NumPy arrays or tensors, got the path {item!r}; open it "
                            f"first: PIL.Image.open(path).")
        if isinstance(item, np.ndarray):
            if item.dtype == object:
                raise TypeError("images must be a numeric NumPy array, got dtype object.")
            tensor, layout, dims = torch.from_numpy(np.ascontiguousarray(item)), "(B, H, W, C)", (2, 3, 4)
        elif isinstance(item, torch.Tensor):
            tensor, layout, dims = item, "(B, C, H, W)", (3, 4)
        else:
            raise TypeError(f"images must be PIL images, NumPy arrays or tensors (or a list of them), got "
                            f"{type(item).__name__}.")
        if tensor.dim() not in dims:
            raise ValueError(f"images must be {layout} (a batch) or one image, got shape {tuple(tensor.shape)}.")
        if tensor.numel() == 0:
            raise ValueError(f"images has an empty batch or size (shape {tuple(tensor.shape)}); pass at least one "
                             f"image.")
        if tensor.dtype == torch.uint8:
            prepared.append(item.astype(np.float32) / 255 if isinstance(item, np.ndarray) else item.float() / 255)
            continue
        if not torch.is_floating_point(tensor):
            raise TypeError(f"images has dtype {tensor.dtype}; pass floats in [0, 1] (e.g. `x / 255`) or uint8 values "
                            f"in [0, 255].")
        check_pixel_range("images", tensor, 0.0, 1.0)
        prepared.append(np.clip(item, 0, 1) if isinstance(item, np.ndarray) else item.clamp(0, 1))
    return prepared if isinstance(images, (list, tuple)) else prepared[0]


def preprocess_images(image_processor: VaeImageProcessor, images: ImageInput, size: int, channels: int,
                      device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Validated images -> `(B, channels, size, size)` in [-1, 1] on `device` / `dtype` (resized and centre-cropped;
    RGB <-> grayscale converted)."""
    images = prepare_image_input(images)
    pixel_values = image_processor.preprocess(images, height=size, width=size, resize_mode="crop")
    found = pixel_values.shape[1]
    if found == 3 and channels == 1:
        pixel_values = pixel_values.mean(dim=1, keepdim=True)
    elif found == 1 and channels == 3:
        pixel_values = pixel_values.expand(-1, 3, -1, -1)
    elif found != channels:
        raise ValueError(f"images have {found} channels but the model expects {channels}; pass RGB or grayscale "
                         f"images (tensors are (B, C, H, W), arrays (B, H, W, C); drop an alpha channel with "
                         f"x[:, :3] or image.convert('RGB')).")
    return pixel_values.to(device=device, dtype=dtype)


def postprocess_images(image_processor: VaeImageProcessor, images: torch.Tensor, output_type: str):
    """diffusers' postprocessing of `(B, C, H, W)` images in about [-1, 1], in float32: with bfloat16 weights the
    outputs are still float32 tensors / arrays in [0, 1] (or PIL images)."""
    return image_processor.postprocess(images.float(), output_type=output_type)


def class_ids(pipe: DiffusionPipeline, class_labels: Any) -> torch.LongTensor:
    """Class ids, class names or a mix (one image per entry) -> `(B,)` ids on the pipeline's device."""
    if class_labels is None:
        raise ValueError("class_labels is required: pass class ids and/or names, one image per entry (e.g. [207, "
                         "'Sneaker']).")
    if isinstance(class_labels, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(class_labels, device="cpu")  # read on the host (`tolist` below)
        if torch.is_floating_point(tensor) or tensor.dtype == torch.bool or tensor.dim() > 1:
            raise ValueError(f"class_labels must be a 1D sequence of integer class ids, got {tensor.dtype} of shape "
                             f"{tuple(tensor.shape)}.")
        values = tensor.flatten().tolist()
    elif isinstance(class_labels, (int, str, np.integer)) and not isinstance(class_labels, bool):
        values = [class_labels]
    elif isinstance(class_labels, (list, tuple)):
        values = list(class_labels)
    else:
        raise TypeError(f"class_labels must be a class id, a class name, or a list / tensor of them, got "
                        f"{type(class_labels).__name__} {class_labels!r}.")
    if not values:
        raise ValueError("class_labels is empty; pass at least one class id or name (one image per entry).")
    ids = []
    for value in values:
        if isinstance(value, str):
            ids.append(pipe.get_label_ids(value)[0])
        elif isinstance(value, torch.Tensor) and value.dim() == 0 and not torch.is_floating_point(value) \
                and value.dtype != torch.bool:
            ids.append(int(value))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            ids.append(int(value))
        else:
            raise TypeError(f"class_labels entries must be class ids (int) or class names (str), got "
                            f"{type(value).__name__} {value!r}.")
    return torch.tensor(ids, dtype=torch.long, device=pipe._execution_device)


class _OtherPipelineMethods:
    """A helpful `AttributeError` for a method of the other pipeline (e.g. `reconstruct` on a FAR pipeline)."""

    _other_methods: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        hint = type(self)._other_methods.get(name)
        if hint is not None:
            raise AttributeError(f"{type(self).__name__} has no {name}(): {hint}")
        return super().__getattr__(name)


class _CheckedLoading:
    """`from_pretrained` of our pipelines: diffusers' loading after cheap checks of a local directory
    (`model_index.json` written for this pipeline, each of `_checked_components` present with a valid config and
    intact weights; every error names the file)."""

    _checked_components: tuple[str, ...] = ()
    _component_configs: dict[str, type] = {}  # our component classes -> their config classes

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        directory = local_directory(pretrained_model_name_or_path, kwargs.get("subfolder"))
        if directory is not None:
            check_pipeline_directory(directory, cls.__name__, cls._checked_components, cls._component_configs)
            if not kwargs.get("subfolder"):
                pretrained_model_name_or_path = str(directory)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


class _HubNativeFolder:
    """What our pipelines write so that diffusers' generic `DiffusionPipeline.from_pretrained(folder_or_repo,
    trust_remote_code=True)` returns them (see `spectralar_hf.remote_code`): `model_index.json` names the pipeline as
    `[module file, class name]`, and `save_pretrained` writes that module file (it imports the class from the
    installed package). Our own `from_pretrained` reads the class name from either form and never runs the file.
    `save_pretrained(push_to_hub=True)` uploads our model card, not diffusers' generic one."""

    @classmethod
    def _dict_from_json_file(cls, json_file):
        # Every config diffusers reads for this class comes through here (`load_config`, and `download` for a Hub
        # repo): the custom-pipeline form naming this class is read as the plain class name, so diffusers loads this
        # class without importing the folder's module file (which would need trust_remote_code).
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, list) and name == [PIPELINE_MODULES.get(cls.__name__), cls.__name__]:
            config["_class_name"] = cls.__name__
        return config

    def to_json_string(self) -> str:
        config = json.loads(super().to_json_string())
        if type(self).__name__ in PIPELINE_MODULES:
            config["_class_name"] = [PIPELINE_MODULES[type(self).__name__], type(self).__name__]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size: int | str | None = None,
                        push_to_hub: bool = False, **kwargs) -> str | None:
        """diffusers' `save_pretrained` plus the module file of `model_index.json`'s `_class_name`. With
        `push_to_hub=True` (and `repo_id`, `token`, `private`, `commit_message`, `revision`, `create_pr`) the folder is
        uploaded with our model card; returns the commit URL."""
        save_pipeline = super().save_pretrained

        def save(folder, **options):
            save_pipeline(folder, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size,
                          **options)
            if type(self).__name__ in PIPELINE_MODULES:
                write_pipeline_module(folder, type(self).__name__)

        return save_and_push(save, save_directory, push_to_hub, self.model_card, kwargs)


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


class SpectralARPipeline(_OtherPipelineMethods, _CheckedLoading, _HubNativeFolder, DiffusionPipeline):
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
    _checked_components = ("tokenizer", "transformer")
    _component_configs = {"SpectralTokenizer": SpectralTokenizerConfig, "SpectralARForCausalLM": SpectralARConfig}
    _callback_tensor_inputs = ["codes"]
    _other_methods = {
        "decode_latents": "it is a FARPipeline method; here decode codes with pipe.decode(codes).",
        "encode_prompt": "SpectralAR is class-conditional (no text); pass class_labels.",
    }

    def __init__(self, tokenizer: SpectralTokenizer, transformer: SpectralARForCausalLM):
        super().__init__()
        check_components(tokenizer, transformer)
        for component in (tokenizer, transformer):  # also when diffusers' generic loader built them
            align_loaded_weights(component)
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

    @property
    def interrupt(self) -> bool:
        """Set from `callback_on_step_end` (`pipe._interrupt = True` as in diffusers, or `pipe.interrupt = True`) to
        stop generation after that step; the images are decoded from what was generated so far. Reset by each
        call."""
        return getattr(self, "_interrupt", False)

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self._interrupt = bool(value)

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
        if not (isinstance(label, str) or (isinstance(label, (list, tuple))
                                           and all(isinstance(name, str) for name in label))):
            raise TypeError(f"get_label_ids takes a class name or a list of names, got {label!r}; class ids need no "
                            f"mapping.")
        labels = [label] if isinstance(label, str) else list(label)
        known = self.labels
        for name in labels:
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=5)
                raise ValueError(f"{name!r} is not a class of this model" + (f"; did you mean {close}?" if close else
                                 f"; known classes: {list(known)[:20]}{' ...' if len(known) > 20 else ''}."))
        return [known[name] for name in labels]

    def _class_ids(self, class_labels: int | str | list | torch.Tensor) -> torch.LongTensor:
        return class_ids(self, class_labels)

    # ------------------------------------------------------------------ generation

    def _sampling_settings(self, **given: Any) -> dict[str, Any]:
        """Explicit arguments win; `None` falls back to `transformer.generation_config` (saved with the model)."""
        defaults = self.transformer.generation_config
        fallback = {"guidance_scale": 1.0, "guidance_schedule": "constant", "temperature": 1.0, "top_k": None,
                    "top_p": None}
        settings = {}
        for name, value in given.items():
            if value is not None:  # given: the transformer validates it (no silent clamping of e.g. top_p > 1)
                settings[name] = value
                continue
            value = getattr(defaults, name, None)
            if name == "top_p" and isinstance(value, (int, float)) and value >= 1.0:
                value = None  # GenerationConfig's "no nucleus filtering"
            if name == "top_k" and value == 0:
                value = None  # GenerationConfig's "no top-k"
            settings[name] = fallback[name] if value is None else value
        # An explicit top_p=1.0 / top_k=0 stays as given (no filtering): as None it would fall back to a saved
        # top_p / top_k when these settings are passed to the pipeline again (examples/sample.py does).
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
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["SpectralARPipeline", int, None, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_intermediates: bool = False,
        compile_config: bool | CompileConfig | None = None,
        **kwargs: Any,
    ) -> SpectralARPipelineOutput | tuple:
        r"""
        Generate images of the given classes.

        Args:
            class_labels: class ids, class names (see `labels` / `get_label_ids`), or a mix; one image per entry.
            guidance_scale: classifier-free guidance `w` (`1.0` = off; logits `w * cond - (w - 1) * uncond`, VAR's
                `cfg = w - 1`). `None` uses `transformer.generation_config`.
            guidance_schedule: `"constant"` or `"linear"` (VAR's ramp from no guidance at the first step).
            temperature, top_k, top_p: sampling filters; `None` uses `transformer.generation_config`, `top_k=0`
                and `top_p=1.0` switch a saved filter off.
            num_tokens: generate only the first `num_tokens` codes and decode them (truncated generation, Table 3).
            generator: `torch.Generator`, or a list of them, one per image (diffusers' convention): image `b`'s
                randomness then comes from generator `b` only, so it does not depend on the other images or on how
                images are batched (a list of one equals that generator alone).
            output_type: `"pil"`, `"np"` (`(B, H, W, C)` in [0, 1]) or `"pt"` (`(B, C, H, W)` in [0, 1]).
            return_dict: return a [`SpectralARPipelineOutput`] instead of a tuple.
            callback_on_step_end: called after every step as `callback(pipe, step, None, {"codes": codes_so_far})`
                (diffusers' convention; there is no timestep). Returning modified codes is not supported. Setting
                `pipe.interrupt` (or diffusers' `pipe._interrupt`) there stops generation after that step: the images
                are decoded from the codes so far (a coarser, low-pass image; `codes` is shorter).
            callback_on_step_end_tensor_inputs: tensors passed to the callback; only `["codes"]`.
            return_intermediates: also return the image decoded after each step (coarse-to-fine strip).
            compile_config: compile the generator's per-step forward (`True`, or a `transformers.CompileConfig`; CUDA
                graphs on CUDA); `None` uses `transformer.generation_config.compile_config` (eager when unset). See
                `SpectralARForCausalLM.sample`.

        Returns:
            [`SpectralARPipelineOutput`] or `(images,)` / `(images, intermediates)`.
        """
        reject_unknown_arguments(type(self).__call__, kwargs)
        inputs = callback_on_step_end_tensor_inputs or ["codes"]
        if isinstance(inputs, str) or set(inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"callback_on_step_end_tensor_inputs must be a list drawn from "
                             f"{self._callback_tensor_inputs}, got {inputs!r}.")
        check_callable("callback_on_step_end", callback_on_step_end)
        check_output_type(output_type)
        if num_tokens is not None:
            num_tokens = check_int("num_tokens", num_tokens)
        labels = self._class_ids(class_labels)
        check_generator(generator, labels.shape[0])
        settings = self._sampling_settings(guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                                           temperature=temperature, top_k=top_k, top_p=top_p)
        config = self.transformer.config
        total = num_tokens if num_tokens is not None else config.num_image_tokens
        self._interrupt = False

        with self.progress_bar(total=max(total // config.tokens_per_step, 1)) as progress:
            def on_step(step: int, codes: torch.LongTensor) -> None:
                progress.update()
                if callback_on_step_end is not None:
                    returned = callback_on_step_end(self, step, None, {"codes": codes})
                    if returned is not None and not isinstance(returned, dict):
                        raise TypeError(f"callback_on_step_end must return None or a dict of tensors, got "
                                        f"{type(returned).__name__}.")
                    if returned is not None and returned.get("codes", codes) is not codes:
                        raise ValueError("callback_on_step_end may not replace codes: earlier codes are cached.")

            codes = self.transformer.sample(labels, num_tokens=num_tokens, generator=generator, callback=on_step,
                                            compile_config=compile_config, interrupt=lambda: self.interrupt,
                                            **settings)

        images = self.tokenizer.decode(codes).reconstruction
        intermediates = self._decode_steps(codes, output_type) if return_intermediates else None
        images = postprocess_images(self.image_processor, images, output_type)
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
        return [postprocess_images(self.image_processor, chunk, output_type) for chunk in decoded.split(batch)]

    # ------------------------------------------------------------------ tokenizer conveniences

    def _preprocess(self, images: ImageInput) -> torch.Tensor:
        """PIL / NumPy / tensors (values in [0, 1] for arrays and tensors) -> `(B, C, S, S)` in [-1, 1]."""
        config = self.tokenizer.config
        return preprocess_images(self.image_processor, images, config.image_size, config.num_channels,
                                 self._execution_device, self.tokenizer.dtype)

    @torch.no_grad()
    def encode(self, images: ImageInput) -> torch.LongTensor:
        """Images (PIL, NumPy `(B, H, W, C)` or tensors `(B, C, H, W)` in [0, 1]) -> `(B, N)` spectral codes."""
        return self.tokenizer.encode(self._preprocess(images)).codes

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor, num_tokens: int | torch.Tensor | None = None,
               output_type: str = "pil"):
        """Decode the first `num_tokens` codes (int or per-sample `(B,)` tensor) to images of `output_type`."""
        check_output_type(output_type)
        return postprocess_images(self.image_processor, self.tokenizer.decode(codes, num_tokens).reconstruction,
                                  output_type)

    @torch.no_grad()
    def reconstruct(self, images: ImageInput, num_tokens: int | torch.Tensor | None = None,
                    output_type: str = "pil"):
        """Encode then decode the first `num_tokens` codes: the image seen through a spectral prefix."""
        check_output_type(output_type)
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
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        compile_config: bool | CompileConfig | None = None,
    ) -> SuperResolutionOutput:
        r"""
        Super-resolution by spectral completion (SpectralAR §4.4, Table 3).

        Each `S x S` image is split into `scale**2` sub-images of `S / scale` pixels (`"stride"`: the pixels
        `[i::scale, j::scale]`; `"patch"`: tiles), each sub-image is upsampled back to `S`, encoded, its low-frequency
        prefix is kept (the frequencies an upsampled image really carries: tokens with `omega_k <= S / scale`, rounded
        down to whole steps, unless `keep_tokens` is given), the remaining codes are completed autoregressively
        (conditioned on `class_labels`, or the null class), decoded, and the `S x S` results reassembled into one
        `scale * S` image. `compile_config` compiles the completion's per-step forward (see `__call__`). `generator`:
        one `torch.Generator`, or a list of them, one per input image: the `scale**2` sub-images of image `b` then
        draw from generator `b` only (together, as one generator draws them for a single image), so image `b`'s
        result does not depend on the other images.
        """
        if method not in ("stride", "patch"):
            raise ValueError(f"method must be 'stride' or 'patch', got {method!r}.")
        check_output_type(output_type)
        if keep_tokens is not None:
            keep_tokens = check_int("keep_tokens", keep_tokens)
        size = self.tokenizer.config.image_size
        if not isinstance(scale, int) or isinstance(scale, bool) or scale < 2 or size % scale != 0:
            raise ValueError(f"scale must be an int >= 2 that divides the image size {size}, got {scale!r}.")
        pixels = self._preprocess(image)
        batch, channels = pixels.shape[:2]
        check_generator(generator, batch)
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
        if isinstance(generator, (list, tuple)):  # image b's scale**2 sub-image rows all draw from generator b
            generator = [item for item in generator for _ in range(scale * scale)]
        codes = self.transformer.sample(labels, prefix_codes=prefix, generator=generator,
                                        compile_config=compile_config, **settings)
        refined = self.tokenizer.decode(codes).reconstruction  # (B * scale^2, C, S, S)

        refined = refined.view(batch, scale, scale, channels, size, size)
        if method == "stride":
            output = refined.permute(0, 3, 4, 1, 5, 2).reshape(batch, channels, size * scale, size * scale)
        else:
            output = refined.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, size * scale, size * scale)
        images = postprocess_images(self.image_processor, output, output_type)
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
