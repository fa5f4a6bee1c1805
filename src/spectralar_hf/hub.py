"""Sharing on the Hugging Face Hub: our model card and the upload path used by every `push_to_hub`.

`transformers` and `diffusers` write a generic card when pushing; ours states the omega schedule, the sizes, the
training data and the metrics (as `model-index`). The card template ships as package data and is the repository's
`MODEL_CARD.md` (`spectralar-hf model-card --template` prints it; a test keeps the two identical).
"""

from __future__ import annotations

import itertools
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from .remote_code import INSTALL_COMMAND, check_auto_class

LIBRARY_NAME = "spectralar_hf"
GENERATOR_TASK = "unconditional-image-generation"  # the Hub's task for class-conditional image generators
TEXT_TO_IMAGE_TASK = "text-to-image"
TOKENIZER_TASK = "image-to-image"  # a tokenizer (or VQGAN) reconstructs images through its codes


def model_card_template() -> str:
    """The Jinja template of our model card (identical to the repository's MODEL_CARD.md)."""
    return resources.files(LIBRARY_NAME).joinpath("data/model_card_template.md").read_text(encoding="utf-8")


def _components_table(tokenizer_config=None, generator_config=None, far_config=None, vae_config=None,
                      vqgan_config=None) -> str:
    rows = ["| component | class | size |", "| --- | --- | --- |"]
    if tokenizer_config is not None:
        c = tokenizer_config
        titok = [text for flag, text in ((c.class_token, "class token"),
                                          (c.legacy_latent_projection, "TiTok's legacy latent projection"),
                                          (c.decoder_output_conv, "RGB output convolution")) if flag]
        if c.pixel_decoder is not None:
            titok.append(f"pixel decoder: MaskGIT-VQGAN over {c.pixel_decoder['codebook_size']} proxy codes")
        rows.append(
            f"| tokenizer | `SpectralTokenizer` | {c.image_size}x{c.image_size}x{c.num_channels} images, patch "
            f"{c.patch_size}, encoder {c.encoder_hidden_size}/{c.encoder_num_hidden_layers} layers, decoder "
            f"{c.decoder_hidden_size}/{c.decoder_num_hidden_layers} layers, N = {c.num_latent_tokens} tokens, "
            f"codebook {c.codebook_size} x {c.token_dim}, causal mask {'on' if c.causal else 'off'}, spectral "
            f"supervision {'on' if c.spectral_supervision else 'off'}{''.join(', ' + text for text in titok)} |"
        )
    if vqgan_config is not None:
        v = vqgan_config
        rows.append(
            f"| vqgan | `MaskGITVQGAN` | {v.image_size}x{v.image_size}x{v.num_channels} images in [0, 1], "
            f"downsampling {v.downsample_factor} ({v.latent_size}x{v.latent_size} codes), channels "
            f"{v.hidden_channels} x {list(v.channel_mult)}, {v.num_res_blocks} ResNet blocks per level, codebook "
            f"{v.codebook_size} x {v.codebook_dim} |"
        )
    if generator_config is not None:
        g = generator_config
        rows.append(
            f"| transformer | `SpectralARForCausalLM` | width {g.hidden_size}, {g.num_hidden_layers} layers, "
            f"{g.num_attention_heads} heads, vocabulary {g.vocab_size}, {g.num_image_tokens} tokens in "
            f"{g.num_steps} steps of {g.tokens_per_step}, {g.num_classes} classes, class dropout "
            f"{g.class_dropout_prob} |"
        )
    if vae_config is not None:
        v = vae_config
        factor = 2 ** (len(v.block_out_channels) - 1)
        rows.append(
            f"| vae | `AutoencoderKL` (diffusers) | {v.in_channels}-channel images, downsampling {factor}, "
            f"{v.latent_channels} latent channels, scaling factor {v.scaling_factor:g} |"
        )
    if far_config is not None:
        f = far_config
        rows.append(
            f"| transformer | `FARTransformer` | {f.latent_channels}x{f.latent_size}x{f.latent_size} latents, patch "
            f"{f.patch_size}, width {f.hidden_size}, {f.encoder_layers} encoder + {f.decoder_layers} decoder layers, "
            f"{f.num_attention_heads} heads, diffusion head {f.head_depth} x {f.head_width}, F = {f.num_levels} "
            f"frequency levels ({f.filter_kind} filter), {f.num_classes} classes, class dropout "
            f"{f.class_dropout_prob} |"
        )
    return "\n".join(rows)


def card_tags(tokenizer_config=None, generator_config=None, far_config=None, vqgan_config=None
              ) -> tuple[list[str], str]:
    """The card's `tags` and `pipeline_tag`, from what the checkpoint is: a spectral tokenizer, a SpectralAR generator
    (class-conditional), a FAR transformer (class- and / or text-conditional) or a MaskGIT-VQGAN."""
    tags = [LIBRARY_NAME]
    if tokenizer_config is not None or generator_config is not None:
        tags += ["spectral-autoregressive", "dct"]
    if far_config is not None:
        tags += ["spectral-autoregressive", "far", "next-frequency-prediction"]
    if vqgan_config is not None:
        tags += ["vqgan"]
    if generator_config is None and far_config is None:
        return tags + ["image-tokenizer"], TOKENIZER_TASK
    tags.append("image-generation")
    class_conditional = generator_config is not None or far_config.num_classes > 0
    text_conditional = far_config is not None and far_config.cross_attention_dim is not None
    if class_conditional:
        tags.append("class-conditional")
    if text_conditional:
        tags.append("text-to-image")
    return tags, TEXT_TO_IMAGE_TASK if text_conditional and not class_conditional else GENERATOR_TASK


def _usage_code(repo_id: str, tokenizer_config, generator_config, far_config=None, vae_config=None,
                vqgan_config=None) -> str:
    if vqgan_config is not None:
        return (
            "from spectralar_hf import MaskGITVQGAN\n\n"
            f'vqgan = MaskGITVQGAN.from_pretrained("{repo_id}")\n'
            "codes = vqgan.encode(pixel_values).codes                # pixel_values in [0, 1] -> (B, h, w) codes\n"
            "images = vqgan.decode_codes(codes).reconstruction       # back to [0, 1]\n"
            "# as TiTok's proxy-code teacher: examples/train_tokenizer.py --proxy_teacher <this folder>"
        )
    if far_config is not None and vae_config is not None:
        if far_config.cross_attention_dim is None:
            condition, single = "class_labels=[0, 1, 2, 3]", "class_labels=[0]"
        elif far_config.num_classes == 0:
            condition, single = 'prompt=["a red boot", "a striped shirt"]', 'prompt="a red boot"'
        else:
            condition = 'class_labels=[0, 1], prompt=["a red boot", "a striped shirt"]'
            single = 'class_labels=[0], prompt="a red boot"'
        return (
            "import torch\n"
            "from spectralar_hf import FARPipeline\n\n"
            f'pipe = FARPipeline.from_pretrained("{repo_id}")\n'
            "# or, in a program that does not import spectralar_hf:\n"
            f'# pipe = diffusers.DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)\n'
            f"images = pipe({condition}, guidance_scale=3.0,  # outer steps: config default\n"
            "              generator=torch.Generator().manual_seed(0)).images\n"
            f"strip = pipe({single}, return_intermediates=True).intermediates  # one image per level"
        )
    if far_config is not None:
        return (
            "from transformers import AutoModel\n\n"
            f'model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)  # runs the installed '
            'spectralar_hf\n'
            "latents = model.sample([0, 1], guidance_scale=3.0)  # decode with the VAE it was trained on"
        )
    if generator_config is not None and tokenizer_config is not None:
        return (
            "import torch\n"
            "from spectralar_hf import SpectralARPipeline\n\n"
            f'pipe = SpectralARPipeline.from_pretrained("{repo_id}")\n'
            "# or, in a program that does not import spectralar_hf:\n"
            f'# pipe = diffusers.DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)\n'
            "images = pipe(class_labels=[0, 1, 2, 3], generator=torch.Generator().manual_seed(0)).images\n"
            "strip = pipe(class_labels=[0], return_intermediates=True).intermediates  # coarse-to-fine"
        )
    if generator_config is not None:
        return (
            "from transformers import AutoModelForCausalLM\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", trust_remote_code=True)  # runs the installed '
            'spectralar_hf\n'
            "codes = model.sample([0, 1], guidance_scale=2.0, top_k=100)"
        )
    return (
        "from transformers import AutoModel\n\n"
        f'tokenizer = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)  # runs the installed '
        'spectralar_hf\n'
        "codes = tokenizer.encode(pixel_values).codes                 # pixel_values in [-1, 1]\n"
        "coarse = tokenizer.decode(codes, num_tokens=4).reconstruction  # low-pass image of omega_4"
    )


def build_model_card(
    repo_id: str,
    tokenizer_config=None,
    generator_config=None,
    datasets: list[str] | None = None,
    metrics: dict[str, float] | None = None,
    dataset_name: str | None = None,
    summary: str | None = None,
    license: str = "apache-2.0",
    far_config=None,
    vae_config=None,
    vqgan_config=None,
) -> ModelCard:
    """Our model card for a pipeline (both configs) or one component.

    Args:
        repo_id: the Hub repository (used in the usage snippet and as model name).
        tokenizer_config, generator_config: the components' configs (either may be None).
        datasets: Hub dataset ids the checkpoint was trained on.
        metrics: e.g. `{"gFID": 3.02, "rFID": 4.03}`; written as `model-index` evaluation results on
            `dataset_name` (default: the first of `datasets`).
        summary: one paragraph describing the checkpoint.
        far_config, vae_config: for FAR checkpoints, the `FARConfig` of the transformer and (for a pipeline) the
            diffusers `AutoencoderKL` config.
        vqgan_config: for a `MaskGITVQGAN` (TiTok's proxy-code teacher), its `MaskGITVQGANConfig`.
    """
    from .utils import check_number

    if isinstance(datasets, str):
        datasets = [datasets]  # one dataset id
    if datasets is not None and not (isinstance(datasets, (list, tuple)) and all(isinstance(d, str) for d in datasets)):
        raise TypeError(f"datasets must be a list of Hub dataset ids (str), got {datasets!r}.")
    if metrics is not None and not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict {{name: value}}, e.g. {{'gFID': 3.02}}, got {type(metrics).__name__}.")
    metrics = {name: check_number(f"metrics[{name!r}]", value) for name, value in (metrics or {}).items()} or metrics
    if metrics and not (dataset_name or datasets):
        raise ValueError("metrics need the dataset they were measured on: pass dataset_name= or datasets=.")
    evaluated_on = dataset_name or (datasets[0] if datasets else None)
    tags, pipeline_tag = card_tags(tokenizer_config, generator_config, far_config, vqgan_config)
    eval_results = [
        EvalResult(task_type=pipeline_tag, dataset_type=evaluated_on, dataset_name=evaluated_on,
                   metric_type=name.lower(), metric_name=name, metric_value=float(value))
        for name, value in (metrics or {}).items()
    ] or None
    card_data = ModelCardData(
        library_name=LIBRARY_NAME, license=license, tags=tags, datasets=datasets,
        pipeline_tag=pipeline_tag, model_name=repo_id, eval_results=eval_results,
    )
    omega_text = "Not part of this component (see the tokenizer)."
    if tokenizer_config is not None:
        omega_text = (f"Token `i` of {tokenizer_config.num_latent_tokens} decodes, with the tokens before it, to the "
                      f"low-pass image keeping the top-left `omega_i x omega_i` DCT coefficients:\n\n"
                      f"`omega = {list(tokenizer_config.omega)}`")
    elif vqgan_config is not None:
        omega_text = (f"A MaskGIT-VQGAN has no spectral schedule: it codes an image as a "
                      f"{vqgan_config.latent_size}x{vqgan_config.latent_size} grid of codes. A SpectralAR tokenizer "
                      f"with a pixel decoder uses it as the proxy-code teacher (TiTok's stage 1) and as the start of "
                      f"its pixel decoder (stage 2).")
    elif far_config is not None:
        omega_text = (f"FAR has no token-to-frequency schedule: every step sees all {far_config.num_tokens} latent "
                      f"tokens, low-pass filtered to one of F = {far_config.num_levels} frequency levels "
                      f"({far_config.filter_kind} filter; level 0 is blank, level F the full latent), and predicts "
                      f"the full latent, which is filtered to the next level (next-frequency prediction).")
    metrics_text = "No metrics recorded yet."
    if metrics:
        metrics_text = "\n".join([f"| metric | value ({evaluated_on}) |", "| --- | --- |"]
                                 + [f"| {name} | {value:g} |" for name, value in metrics.items()])
    return ModelCard.from_template(
        card_data,
        template_str=model_card_template(),
        model_name=repo_id,
        install_command=INSTALL_COMMAND,
        summary=summary or "A spectral autoregressive image model.",
        components_table=_components_table(tokenizer_config, generator_config, far_config, vae_config,
                                           vqgan_config),
        omega_text=omega_text,
        usage_code=_usage_code(repo_id, tokenizer_config, generator_config, far_config, vae_config, vqgan_config),
        datasets_text=", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets)
        if datasets else "Not recorded.",
        metrics_text=metrics_text,
    )


def push_folder_to_hub(
    save: Callable[[str], Any],
    repo_id: str,
    card: ModelCard,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Create `repo_id` if needed, `save(tmp_dir)`, add our `README.md` card, upload the folder in one commit.

    Returns the commit URL.
    """
    with tempfile.TemporaryDirectory() as folder:
        save(folder)
        return upload_folder_with_card(folder, repo_id, card, token=token, private=private,
                                       commit_message=commit_message, revision=revision, create_pr=create_pr)


def upload_folder_with_card(
    folder: str | os.PathLike,
    repo_id: str,
    card: ModelCard,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Create `repo_id` if needed, write our card as `folder/README.md`, upload `folder` in one commit; returns the
    commit URL. The upload path of every `push_to_hub` and `save_pretrained(push_to_hub=True)`."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card.save(os.path.join(folder, "README.md"))
    return api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder), revision=revision, create_pr=create_pr,
                             commit_message=commit_message or "Upload with spectralar_hf")


HUB_KWARGS = ("repo_id", "commit_message", "private", "token", "revision", "create_pr")


def save_and_push(save: Callable[..., Any], save_directory: str | os.PathLike, push_to_hub: bool,
                  model_card: Callable[[str], ModelCard], kwargs: dict[str, Any]) -> str | None:
    """`save_pretrained` of our models and pipelines: `save(save_directory, **kwargs)` (the library's save, without
    its push), then, with `push_to_hub`, upload the folder with our card (`model_card(repo_id)`) instead of the
    library's generic one. `repo_id` defaults to the folder's name, as in transformers and diffusers. Returns the
    commit URL when pushing."""
    hub = {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}
    given = sorted(name for name, value in hub.items() if value not in (None, False))
    if given and not push_to_hub:
        raise TypeError(f"{given} only apply with push_to_hub=True.")
    save(save_directory, **kwargs)
    if not push_to_hub:
        return None
    repo_id = hub.pop("repo_id", None) or Path(save_directory).resolve().name
    return upload_folder_with_card(save_directory, repo_id, model_card(repo_id), **hub)


# Address alignment (bytes) of every tensor torch's CPU allocator creates.
CPU_TENSOR_ALIGNMENT = 64


def align_loaded_weights(module: torch.nn.Module) -> torch.nn.Module:
    """Copy the CPU parameters and buffers of `module` that sit at addresses not aligned to `CPU_TENSOR_ALIGNMENT`
    bytes into fresh tensors (which are); returns `module`.

    safetensors (0.8) hands transformers and diffusers CPU tensors at 8-byte-aligned addresses, and CPU BLAS kernels
    choose their summation order by alignment, so a loaded model's outputs differed from the saved model's by ~1e-7
    relative (a `(1, 256) x (256, 32)` matmul already does) and a saved pipeline did not reproduce its images bit
    for bit. The copy costs one pass over the weights at load time; CUDA tensors are left alone.
    """
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % CPU_TENSOR_ALIGNMENT:
                tensor.data = tensor.data.clone()
    return module


class SpectralARHubMixin:
    """`push_to_hub` for our `PreTrainedModel`s (the same files as `save_pretrained` plus our model card), a
    `save_pretrained` whose `push_to_hub=True` uploads our card too, and a `from_pretrained` that checks a local
    directory first, so that a missing directory, a pipeline directory, a corrupt `config.json` or a truncated
    `model.safetensors` is reported with the file and the fix. `config.json` carries an `auto_map` (see
    `spectralar_hf.remote_code`) so that transformers' Auto classes load the folder with `trust_remote_code=True`."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, after cheap checks of a local directory (see
        `spectralar_hf.utils.check_model_directory`), with CPU weights realigned (`align_loaded_weights`)."""
        from .utils import check_model_directory, local_directory

        directory = local_directory(pretrained_model_name_or_path, kwargs.get("subfolder"))
        if directory is not None and kwargs.get("config") is None and not kwargs.get("gguf_file"):
            check_model_directory(directory, cls.config_class, cls.__name__)
        try:
            return align_loaded_weights(super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs))
        except RuntimeError as error:
            if "ignore_mismatched_sizes" not in str(error):
                raise
            where = directory if directory is not None else pretrained_model_name_or_path
            raise ValueError(f"The weights in {where} do not fit the sizes in its config.json (see the load report "
                             f"above): config.json was edited or belongs to another checkpoint; restore it or save the "
                             f"model again.") from error

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel") -> None:
        """Checks `auto_class` only: transformers' version would make `save_pretrained` copy our source file (which
        imports the rest of the package relatively) instead of writing the `auto_map` of `remote_code`."""
        check_auto_class(cls, cls.config_class.model_type, auto_class)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False,
                        **kwargs) -> str | None:
        """transformers' `save_pretrained` (the config writes the `auto_map` module file); `push_to_hub=True` (with
        `repo_id`, `token`, `private`, `commit_message`, `revision`, `create_pr`) uploads the folder with our model
        card instead of transformers' generic one and returns the commit URL."""
        save_model = super().save_pretrained
        return save_and_push(lambda folder, **options: save_model(folder, *args, **options), save_directory,
                             push_to_hub, self.model_card, kwargs)

    def model_card(self, repo_id: str, datasets: list[str] | None = None, metrics: dict[str, float] | None = None,
                   summary: str | None = None) -> ModelCard:
        """Our model card for this model (see `build_model_card`)."""
        model_type = self.config.model_type
        return build_model_card(
            repo_id,
            tokenizer_config=self.config if model_type == "spectral_tokenizer" else None,
            generator_config=self.config if model_type == "spectralar" else None,
            far_config=self.config if model_type == "far" else None,
            vqgan_config=self.config if model_type == "maskgit_vqgan" else None,
            datasets=datasets, metrics=metrics, summary=summary,
        )

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "5GB",
        datasets: list[str] | None = None,
        metrics: dict[str, float] | None = None,
        summary: str | None = None,
    ) -> str:
        """Upload this model with our model card (see `build_model_card`); returns the commit URL."""
        card = self.model_card(repo_id, datasets=datasets, metrics=metrics, summary=summary)
        return push_folder_to_hub(lambda folder: self.save_pretrained(folder, max_shard_size=max_shard_size),
                                  repo_id, card, token=token, private=private, commit_message=commit_message,
                                  revision=revision, create_pr=create_pr)
