"""Every public entry point answers bad input with one clear exception that names the problem and the fix (never a
traceback from deep inside torch / diffusers / safetensors, never a silent wrong result), and the good paths around
each fix still work. One row per case; docs/bad_input_api.md is the table of these cases.

Tiny random components only (tests/test_pipeline.py's SpectralAR pipeline, tests/test_far.py's FAR sizes), one CPU
thread; the cases fail before any real work, so the whole module takes a few seconds.
"""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_far import spread, tiny_config
from test_far import tiny_vae as far_vae
from test_far_text import text_config
from test_pipeline import make_pipeline

from spectralar_hf.pipelines.pipeline_far import encode_prompt
from spectralar_hf import (
    FARConfig,
    FARPipeline,
    FARTransformer,
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
    build_noise_scheduler,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NAN, INF = float("nan"), float("inf")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def c(one_thread):
    """The components every case uses: a SpectralAR pipeline (3-channel 32 px tokenizer with 16 tokens, 256 codes;
    10 named classes), a class-conditional FAR pipeline (2 named classes, 2 x 4 x 4 latents, 16 px images) and a
    text-conditional FAR pipeline without a text encoder."""
    sar = make_pipeline()
    transformer = spread(FARTransformer(tiny_config(num_classes=2, id2label={0: "circle", 1: "square"},
                                                    beta_schedule="linear"))).eval()
    far = FARPipeline(vae=far_vae(), transformer=transformer, scheduler=build_noise_scheduler(transformer.config))
    far.set_progress_bar_config(disable=True)
    text_model = spread(FARTransformer(text_config())).eval()
    text = FARPipeline(vae=far_vae(), transformer=text_model, scheduler=build_noise_scheduler(text_model.config))
    text.set_progress_bar_config(disable=True)
    codes = torch.randint(0, 256, (2, 16), generator=seeded(0))
    return SimpleNamespace(sar=sar, tok=sar.tokenizer, gen=sar.transformer, far=far, farm=transformer, text=text,
                           codes=codes, x=torch.rand(2, 3, 32, 32, generator=seeded(1)) * 2 - 1,
                           img=torch.rand(2, 3, 32, 32, generator=seeded(2)), latents=torch.randn(2, 2, 4, 4))


FAR_FAST = dict(num_inference_steps=1, diffusion_steps=1, output_type="latent")

# (id, entry point, input, call(c), exception, regex of the message)
CASES = [
    # ---------------------------------------------------------------- SpectralTokenizer.encode / forward
    ("tok-encode-nan", "SpectralTokenizer.encode", "NaN pixels",
     lambda c: c.tok.encode(torch.full((2, 3, 32, 32), NAN)), ValueError, r"pixel_values contains NaN or inf"),
    ("tok-encode-0-255", "SpectralTokenizer.encode", "float pixels in [0, 255]",
     lambda c: c.tok.encode(c.img * 255), ValueError, r"\[-1, 1\].*x / 127\.5 - 1"),
    ("tok-encode-0-1", "SpectralTokenizer.encode", "float pixels in [0, 1.5]",
     lambda c: c.tok.encode(c.img * 1.5), ValueError, r"must hold values in \[-1, 1\].*2 \* x - 1"),
    ("tok-encode-uint8", "SpectralTokenizer.encode", "uint8 pixels",
     lambda c: c.tok.encode((c.img * 255).to(torch.uint8)), ValueError, r"integer dtype.*float\(\) / 127\.5 - 1"),
    ("tok-encode-empty", "SpectralTokenizer.encode", "0 images",
     lambda c: c.tok.encode(c.x[:0]), ValueError, r"empty batch \(0 images\)"),
    ("tok-encode-3d", "SpectralTokenizer.encode", "one (C, H, W) image",
     lambda c: c.tok.encode(c.x[0]), ValueError, r"\(B, C, H, W\).*unsqueeze\(0\)"),
    ("tok-encode-1ch", "SpectralTokenizer.encode", "1-channel images, 3-channel tokenizer",
     lambda c: c.tok.encode(c.x[:, :1]), ValueError, r"1 channels but the tokenizer expects 3.*expand"),
    ("tok-encode-size", "SpectralTokenizer.encode", "64 px images, 32 px tokenizer",
     lambda c: c.tok.encode(torch.zeros(2, 3, 64, 64)), ValueError, r"64x64 but the tokenizer expects 32x32"),
    ("tok-encode-numpy", "SpectralTokenizer.encode", "NumPy array",
     lambda c: c.tok.encode(c.x.numpy()), TypeError, r"must be a torch.Tensor.*torch.as_tensor"),
    ("tok-forward-nan", "SpectralTokenizer.forward", "NaN pixels (training step)",
     lambda c: c.tok(torch.full((2, 3, 32, 32), NAN)), ValueError, r"NaN or inf"),
    ("tok-forward-empty", "SpectralTokenizer.forward", "0 images",
     lambda c: c.tok(c.x[:0]), ValueError, r"empty batch"),
    ("tok-forward-generator", "SpectralTokenizer.forward", "generator=3",
     lambda c: c.tok(c.x, generator=3), TypeError, r"generator must be a torch.Generator"),
    # ---------------------------------------------------------------- SpectralTokenizer.decode
    ("tok-decode-num-tokens-0", "SpectralTokenizer.decode", "num_tokens=0",
     lambda c: c.tok.decode(c.codes, 0), ValueError, r"num_tokens must lie in \[1, 16\]"),
    ("tok-decode-num-tokens-17", "SpectralTokenizer.decode", "num_tokens=17 > N",
     lambda c: c.tok.decode(c.codes, 17), ValueError, r"num_tokens must lie in \[1, 16\]"),
    ("tok-decode-num-tokens-float", "SpectralTokenizer.decode", "num_tokens=4.0",
     lambda c: c.tok.decode(c.codes, 4.0), ValueError, r"num_tokens must be an int or a \(B,\) integer tensor"),
    ("tok-decode-num-tokens-length", "SpectralTokenizer.decode", "per-sample num_tokens of length 3 for B = 2",
     lambda c: c.tok.decode(c.codes, torch.tensor([1, 2, 3])), ValueError, r"with B = 2, got .* shape \(3,\)"),
    ("tok-decode-num-tokens-bool", "SpectralTokenizer.decode", "bool num_tokens tensor",
     lambda c: c.tok.decode(c.codes, torch.tensor([True, True])), ValueError, r"integer tensor with B = 2"),
    ("tok-decode-codes-range", "SpectralTokenizer.decode", "codes >= codebook_size",
     lambda c: c.tok.decode(c.codes + 256), ValueError, r"codes must lie in \[0, 256\).*another codebook"),
    ("tok-decode-codes-float", "SpectralTokenizer.decode", "float codes",
     lambda c: c.tok.decode(c.codes.float()), ValueError, r"integer codebook indices.*codes\.long\(\)"),
    ("tok-decode-codes-1d", "SpectralTokenizer.decode", "1D codes",
     lambda c: c.tok.decode(c.codes[0]), ValueError, r"\(B, k\).*unsqueeze\(0\)"),
    ("tok-decode-codes-empty", "SpectralTokenizer.decode", "0 rows of codes",
     lambda c: c.tok.decode(c.codes[:0]), ValueError, r"empty batch \(0 rows\)"),
    ("tok-decode-codes-long", "SpectralTokenizer.decode", "17 codes for N = 16",
     lambda c: c.tok.decode(torch.zeros(2, 17, dtype=torch.long)), ValueError, r"between 1 and 16"),
    # ---------------------------------------------------------------- configs
    ("tok-config-omega-decreasing", "SpectralTokenizerConfig", "omega not increasing",
     lambda c: SpectralTokenizerConfig.from_preset("tiny-32", omega=list(range(16, 0, -1))), ValueError,
     r"omega is decreasing"),
    ("tok-config-omega-repeat", "SpectralTokenizerConfig", "omega repeating a level",
     lambda c: SpectralTokenizerConfig.from_preset("tiny-32", omega=[1] * 16), ValueError, r"omega repeats 1"),
    ("tok-config-str-int", "SpectralTokenizerConfig", "image_size='32' (hand-edited JSON)",
     lambda c: SpectralTokenizerConfig.from_preset("tiny-32", image_size="32"), TypeError,
     r"image_size must be int, got str '32'"),
    ("tok-config-layers-0", "SpectralTokenizerConfig", "encoder_num_hidden_layers=0",
     lambda c: SpectralTokenizerConfig.from_preset("tiny-32", encoder_num_hidden_layers=0), ValueError,
     r"encoder_num_hidden_layers = 0 must be positive"),
    ("tok-config-nan", "SpectralTokenizerConfig", "commitment_cost=NaN",
     lambda c: SpectralTokenizerConfig.from_preset("tiny-32", commitment_cost=NAN), ValueError,
     r"commitment_cost must be a finite number"),
    ("gen-config-id2label-list", "SpectralARConfig", "id2label as a list",
     lambda c: SpectralARConfig.from_preset("tiny", id2label=["a"] * 10), TypeError, r"dict\(enumerate\(names\)\)"),
    ("gen-config-dropout", "SpectralARConfig", "dropout=2.0",
     lambda c: SpectralARConfig.from_preset("tiny", dropout=2.0), ValueError, r"dropout must lie in \[0, 1\)"),
    ("far-config-negative", "FARConfig", "latent_size=-4",
     lambda c: FARConfig(latent_size=-4), ValueError, r"latent_size \(-4\).*must be positive"),
    ("far-config-hidden-0", "FARConfig", "hidden_size=0",
     lambda c: FARConfig(hidden_size=0), ValueError, r"hidden_size = 0 must be positive"),
    ("far-config-guidance-nan", "FARConfig", "guidance_scale=NaN",
     lambda c: FARConfig(guidance_scale=NAN), ValueError, r"guidance_scale must be a finite number"),
    ("far-config-temperature", "FARConfig", "temperature=[1, 1, 1]",
     lambda c: FARConfig(temperature=[1.0, 1.0, 1.0]), ValueError, r"\[start, end\] pair"),
    ("far-config-diffusion-steps", "FARConfig", "diffusion_steps > num_train_timesteps",
     lambda c: FARConfig(diffusion_steps=5000), ValueError, r"exceeds num_train_timesteps 1000"),
    # ---------------------------------------------------------------- SpectralARForCausalLM
    ("gen-sample-guidance-nan", "SpectralARForCausalLM.sample", "guidance_scale=NaN",
     lambda c: c.gen.sample([0, 1], guidance_scale=NAN), ValueError, r"guidance_scale must be a finite number"),
    ("gen-sample-guidance-inf", "SpectralARForCausalLM.sample", "guidance_scale=inf",
     lambda c: c.gen.sample([0, 1], guidance_scale=INF), ValueError, r"guidance_scale must be a finite number"),
    ("gen-sample-guidance-str", "SpectralARForCausalLM.sample", "guidance_scale='2'",
     lambda c: c.gen.sample([0], guidance_scale="2"), TypeError, r"guidance_scale must be a real number"),
    ("gen-sample-temperature-inf", "SpectralARForCausalLM.sample", "temperature=inf",
     lambda c: c.gen.sample([0], temperature=INF), ValueError, r"temperature must be a finite number"),
    ("gen-sample-temperature-0", "SpectralARForCausalLM.sample", "temperature=0",
     lambda c: c.gen.sample([0], temperature=0.0), ValueError, r"temperature must be > 0; use top_k=1"),
    ("gen-sample-top-p-nan", "SpectralARForCausalLM.sample", "top_p=NaN",
     lambda c: c.gen.sample([0], top_p=NAN), ValueError, r"top_p must be a finite number"),
    ("gen-sample-top-p-1.5", "SpectralARForCausalLM.sample", "top_p=1.5",
     lambda c: c.gen.sample([0], top_p=1.5), ValueError, r"top_p must lie in \(0, 1\]"),
    ("gen-sample-top-k-float", "SpectralARForCausalLM.sample", "top_k=2.0",
     lambda c: c.gen.sample([0], top_k=2.0), ValueError, r"top_k must be an int >= 0"),
    ("gen-sample-empty", "SpectralARForCausalLM.sample", "0 class labels",
     lambda c: c.gen.sample([]), ValueError, r"class_labels is empty"),
    ("gen-sample-names", "SpectralARForCausalLM.sample", "class names",
     lambda c: c.gen.sample(["Bag"]), TypeError, r"class names are mapped to ids by the pipeline"),
    ("gen-sample-class-range", "SpectralARForCausalLM.sample", "class id 11 of 10",
     lambda c: c.gen.sample([11]), ValueError, r"class id out of range.*10 = null class"),
    ("gen-sample-num-tokens-float", "SpectralARForCausalLM.sample", "num_tokens=4.0",
     lambda c: c.gen.sample([0], num_tokens=4.0), TypeError, r"num_tokens must be an int, got float"),
    ("gen-sample-generator-list", "SpectralARForCausalLM.sample", "3 generators for 2 images",
     lambda c: c.gen.sample([0, 1], generator=[seeded(), seeded(), seeded()]), ValueError,
     r"got 3 generators for 2 images; pass one per image or a single generator"),
    ("gen-sample-callback", "SpectralARForCausalLM.sample", "callback=1",
     lambda c: c.gen.sample([0], callback=1), TypeError, r"callback must be a function"),
    ("gen-sample-prefix-list", "SpectralARForCausalLM.sample", "prefix_codes as a list",
     lambda c: c.gen.sample([0], prefix_codes=[[1]]), ValueError, r"prefix_codes must be a \(1, m\) integer tensor"),
    ("gen-generate-guidance-nan", "SpectralARForCausalLM.generate", "guidance_scale=NaN",
     lambda c: c.gen.generate(c.gen.start_token_ids([1]), max_new_tokens=2, guidance_scale=NAN), ValueError,
     r"guidance_scale must be a finite number"),
    ("gen-forward-codes-range", "SpectralARForCausalLM.forward", "codes >= vocab_size with class_labels",
     lambda c: c.gen(input_ids=c.codes + 256, class_labels=torch.tensor([0, 1])), ValueError,
     r"input_ids: codes must lie in \[0, 256\)"),
    ("gen-forward-codes-huge", "SpectralARForCausalLM.forward", "ids beyond every start token, no class_labels",
     lambda c: c.gen(input_ids=c.codes + 5000), ValueError, r"codes must lie in \[0, 256\)"),
    ("gen-forward-codes-float", "SpectralARForCausalLM.forward", "float input_ids",
     lambda c: c.gen(input_ids=c.codes.float(), class_labels=torch.tensor([0, 1])), ValueError,
     r"integer codes.*\.long\(\)"),
    ("gen-forward-codes-1d", "SpectralARForCausalLM.forward", "1D input_ids",
     lambda c: c.gen(input_ids=c.codes[0], class_labels=torch.tensor([0])), ValueError, r"\(B, L\).*unsqueeze"),
    ("gen-forward-codes-long", "SpectralARForCausalLM.forward", "40 codes for N = 16 (was silently cut)",
     lambda c: c.gen(input_ids=torch.zeros(2, 40, dtype=torch.long), class_labels=torch.tensor([0, 1])), ValueError,
     r"40 codes but an image has num_image_tokens = 16"),
    ("gen-forward-labels-count", "SpectralARForCausalLM.forward", "3 class labels for 2 rows",
     lambda c: c.gen(input_ids=c.codes, class_labels=torch.tensor([0, 1, 2])), ValueError,
     r"3 entries for a batch of 2"),
    ("gen-forward-targets-float", "SpectralARForCausalLM.forward", "float labels",
     lambda c: c.gen(input_ids=c.codes, class_labels=torch.tensor([0, 1]), labels=c.codes.float()), ValueError,
     r"labels must hold integer codes"),
    ("gen-forward-targets-ignore", "SpectralARForCausalLM.forward", "-100 (ignore) labels",
     lambda c: c.gen(input_ids=c.codes, class_labels=torch.tensor([0, 1]), labels=torch.full_like(c.codes, -100)),
     ValueError, r"-100 \('ignore'\) labels are not supported"),
    ("gen-forward-targets-rows", "SpectralARForCausalLM.forward", "labels with 1 row for 2",
     lambda c: c.gen(input_ids=c.codes, class_labels=torch.tensor([0, 1]), labels=c.codes[:1]), ValueError,
     r"labels has 1 rows for a batch of 2"),
    ("gen-forward-attention-mask", "SpectralARForCausalLM.forward", "attention_mask of shape (3, 5) (was ignored)",
     lambda c: c.gen(input_ids=c.codes, class_labels=torch.tensor([0, 1]), attention_mask=torch.ones(3, 5)),
     ValueError, r"attention_mask must be a \(B, positions\) padding mask.*B = 2 and at least 16 positions"),
    # ---------------------------------------------------------------- SpectralARPipeline
    ("sar-guidance-nan", "SpectralARPipeline.__call__", "guidance_scale=NaN",
     lambda c: c.sar([0, 1], guidance_scale=NAN), ValueError, r"guidance_scale must be a finite number"),
    ("sar-top-p-1.5", "SpectralARPipeline.__call__", "top_p=1.5 (was clamped to 1)",
     lambda c: c.sar([0], top_p=1.5), ValueError, r"top_p must lie in \(0, 1\]"),
    ("sar-top-k-negative", "SpectralARPipeline.__call__", "top_k=-1",
     lambda c: c.sar([0], top_k=-1), ValueError, r"top_k must be an int >= 0 \(0 = no top-k filtering"),
    ("sar-output-type", "SpectralARPipeline.__call__", "output_type='bogus'",
     lambda c: c.sar([0], output_type="bogus"), ValueError, r"output_type must be one of \('pil', 'np', 'pt'\)"),
    ("sar-empty-list", "SpectralARPipeline.__call__", "class_labels=[]",
     lambda c: c.sar([]), ValueError, r"class_labels is empty"),
    ("sar-none", "SpectralARPipeline.__call__", "class_labels=None",
     lambda c: c.sar(None), ValueError, r"class_labels is required"),
    ("sar-float-id", "SpectralARPipeline.__call__", "class id 1.5 (was truncated to 1)",
     lambda c: c.sar([1.5]), TypeError, r"class ids \(int\) or class names \(str\), got float 1.5"),
    ("sar-float-tensor", "SpectralARPipeline.__call__", "float tensor of class ids",
     lambda c: c.sar(torch.tensor([1.0])), ValueError, r"integer class ids"),
    ("sar-bool-id", "SpectralARPipeline.__call__", "class id True",
     lambda c: c.sar([True]), TypeError, r"got bool True"),
    ("sar-unknown-name", "SpectralARPipeline.__call__", "misspelt class name",
     lambda c: c.sar(["Sneakr"]), ValueError, r"not a class of this model; did you mean \['Sneaker'\]"),
    ("sar-class-range", "SpectralARPipeline.__call__", "class id -1",
     lambda c: c.sar([-1]), ValueError, r"class id out of range"),
    ("sar-num-tokens", "SpectralARPipeline.__call__", "num_tokens=17",
     lambda c: c.sar([0], num_tokens=17), ValueError, r"num_tokens must be a multiple of tokens_per_step"),
    ("sar-num-tokens-float", "SpectralARPipeline.__call__", "num_tokens=4.0",
     lambda c: c.sar([0], num_tokens=4.0), TypeError, r"num_tokens must be an int"),
    ("sar-schedule", "SpectralARPipeline.__call__", "guidance_schedule='cosine'",
     lambda c: c.sar([0], guidance_schedule="cosine"), ValueError, r"guidance_schedule must be one of"),
    ("sar-generator-int", "SpectralARPipeline.__call__", "generator=0",
     lambda c: c.sar([0], generator=0), TypeError, r"torch.Generator\(\).manual_seed"),
    ("sar-callback", "SpectralARPipeline.__call__", "callback_on_step_end=1",
     lambda c: c.sar([0], callback_on_step_end=1), TypeError, r"callback_on_step_end must be a function"),
    ("sar-callback-return", "SpectralARPipeline.__call__", "callback returning an int",
     lambda c: c.sar([0], callback_on_step_end=lambda *args: 5), TypeError, r"must return None or a dict"),
    ("sar-callback-inputs", "SpectralARPipeline.__call__", "callback_on_step_end_tensor_inputs='codes'",
     lambda c: c.sar([0], callback_on_step_end_tensor_inputs="codes"), ValueError, r"must be a list drawn from"),
    ("sar-get-label-ids-int", "SpectralARPipeline.get_label_ids", "an int",
     lambda c: c.sar.get_label_ids(3), TypeError, r"class ids need no mapping"),
    ("sar-encode-nan", "SpectralARPipeline.encode", "NaN pixels (were all-zero codes)",
     lambda c: c.sar.encode(torch.full((2, 3, 32, 32), NAN)), ValueError, r"images contains NaN or inf"),
    ("sar-reconstruct-0-255", "SpectralARPipeline.reconstruct", "float pixels in [0, 255]",
     lambda c: c.sar.reconstruct(c.img * 255), ValueError, r"\[0, 1\].*x / 255"),
    ("sar-reconstruct-minus1-1", "SpectralARPipeline.reconstruct", "float pixels in [-1, 1]",
     lambda c: c.sar.reconstruct(c.x), ValueError, r"\[0, 1\].*\(x \+ 1\) / 2"),
    ("sar-reconstruct-np-0-255", "SpectralARPipeline.reconstruct", "float NumPy (B, H, W, C) in [0, 255]",
     lambda c: c.sar.reconstruct(c.img.permute(0, 2, 3, 1).numpy() * 255), ValueError, r"x / 255"),
    ("sar-reconstruct-empty", "SpectralARPipeline.reconstruct", "0 images",
     lambda c: c.sar.reconstruct(c.img[:0]), ValueError, r"empty batch"),
    ("sar-reconstruct-empty-list", "SpectralARPipeline.reconstruct", "[]",
     lambda c: c.sar.reconstruct([]), ValueError, r"images is empty"),
    ("sar-reconstruct-5d", "SpectralARPipeline.reconstruct", "5D tensor",
     lambda c: c.sar.reconstruct(c.img[None]), ValueError, r"images must be \(B, C, H, W\)"),
    ("sar-reconstruct-4ch", "SpectralARPipeline.reconstruct", "4-channel (RGBA) tensor",
     lambda c: c.sar.reconstruct(torch.rand(2, 4, 32, 32)), ValueError, r"4 channels but the model expects 3"),
    ("sar-reconstruct-path", "SpectralARPipeline.reconstruct", "a file name",
     lambda c: c.sar.reconstruct("photo.png"), TypeError, r"PIL.Image.open\(path\)"),
    ("sar-reconstruct-int64", "SpectralARPipeline.reconstruct", "int64 tensor",
     lambda c: c.sar.reconstruct(torch.zeros(1, 3, 32, 32, dtype=torch.long)), TypeError, r"uint8 values"),
    ("sar-reconstruct-output-type", "SpectralARPipeline.reconstruct", "output_type='latent'",
     lambda c: c.sar.reconstruct(c.img, output_type="latent"), ValueError, r"output_type must be one of"),
    ("sar-decode-output-type", "SpectralARPipeline.decode", "output_type='bogus'",
     lambda c: c.sar.decode(c.codes, output_type="bogus"), ValueError, r"output_type must be one of"),
    ("sar-sr-nan", "SpectralARPipeline.super_resolve", "NaN image",
     lambda c: c.sar.super_resolve(torch.full((1, 3, 32, 32), NAN)), ValueError, r"NaN or inf"),
    ("sar-sr-guidance-nan", "SpectralARPipeline.super_resolve", "guidance_scale=NaN",
     lambda c: c.sar.super_resolve(c.img[:1], guidance_scale=NAN), ValueError, r"guidance_scale must be a finite"),
    ("sar-sr-top-p", "SpectralARPipeline.super_resolve", "top_p=2 (was clamped)",
     lambda c: c.sar.super_resolve(c.img[:1], top_p=2.0), ValueError, r"top_p must lie in \(0, 1\]"),
    ("sar-sr-scale", "SpectralARPipeline.super_resolve", "scale=3 (does not divide 32)",
     lambda c: c.sar.super_resolve(c.img[:1], scale=3), ValueError, r"scale must be an int >= 2 that divides"),
    ("sar-sr-scale-bool", "SpectralARPipeline.super_resolve", "scale=True",
     lambda c: c.sar.super_resolve(c.img[:1], scale=True), ValueError, r"scale must be an int >= 2"),
    ("sar-sr-method", "SpectralARPipeline.super_resolve", "method='bicubic'",
     lambda c: c.sar.super_resolve(c.img[:1], method="bicubic"), ValueError, r"method must be 'stride' or 'patch'"),
    ("sar-sr-keep-float", "SpectralARPipeline.super_resolve", "keep_tokens=2.5",
     lambda c: c.sar.super_resolve(c.img[:1], keep_tokens=2.5), TypeError, r"keep_tokens must be an int"),
    ("sar-sr-keep-range", "SpectralARPipeline.super_resolve", "keep_tokens=99",
     lambda c: c.sar.super_resolve(c.img[:1], keep_tokens=99), ValueError, r"keep_tokens must lie in \[0, 16\]"),
    ("sar-sr-labels", "SpectralARPipeline.super_resolve", "3 labels for 2 images",
     lambda c: c.sar.super_resolve(c.img, class_labels=[0, 1, 2]), ValueError, r"one class label per image"),
    ("sar-sr-output-type", "SpectralARPipeline.super_resolve", "output_type='bogus'",
     lambda c: c.sar.super_resolve(c.img[:1], output_type="bogus"), ValueError, r"output_type must be one of"),
    ("sar-decode-latents", "SpectralARPipeline.decode_latents", "a FAR method",
     lambda c: c.sar.decode_latents(c.latents), AttributeError, r"FARPipeline method.*pipe.decode\(codes\)"),
    ("sar-model-card-metric", "SpectralARPipeline.model_card / push_to_hub", "metrics={'gFID': 'abc'}",
     lambda c: c.sar.model_card("me/x", datasets=["d"], metrics={"gFID": "abc"}), TypeError,
     r"metrics\['gFID'\] must be a real number"),
    ("sar-model-card-metric-nan", "SpectralARPipeline.model_card / push_to_hub", "metrics={'gFID': NaN}",
     lambda c: c.sar.model_card("me/x", datasets=["d"], metrics={"gFID": NAN}), ValueError, r"finite number"),
    ("sar-model-card-datasets", "SpectralARPipeline.model_card / push_to_hub", "datasets=[3]",
     lambda c: c.sar.model_card("me/x", datasets=[3]), TypeError, r"list of Hub dataset ids"),
    # ---------------------------------------------------------------- FARTransformer
    ("far-sample-guidance-nan", "FARTransformer.sample", "guidance_scale=NaN (was NaN latents)",
     lambda c: c.farm.sample([0], num_steps=1, diffusion_steps=1, guidance_scale=NAN), ValueError,
     r"guidance_scale must be a finite number"),
    ("far-sample-temperature-nan", "FARTransformer.sample", "temperature=NaN (was NaN latents)",
     lambda c: c.farm.sample([0], num_steps=1, diffusion_steps=1, temperature=NAN), ValueError,
     r"temperature must be a finite number"),
    ("far-sample-temperature-pair", "FARTransformer.sample", "temperature=(NaN, 1)",
     lambda c: c.farm.sample([0], num_steps=1, diffusion_steps=1, temperature=(NAN, 1.0)), ValueError,
     r"temperature must be a finite number"),
    ("far-sample-diffusion-float", "FARTransformer.sample", "diffusion_steps=2.5",
     lambda c: c.farm.sample([0], num_steps=1, diffusion_steps=2.5), TypeError, r"diffusion_steps must be an int"),
    ("far-sample-diffusion-floats", "FARTransformer.sample", "diffusion_steps=[2.7, 3.2] (were truncated)",
     lambda c: c.farm.sample([0], num_steps=2, diffusion_steps=[2.7, 3.2]), TypeError,
     r"diffusion_steps entries must be an int"),
    ("far-sample-diffusion-empty", "FARTransformer.sample", "diffusion_steps=[]",
     lambda c: c.farm.sample([0], num_steps=2, diffusion_steps=[]), ValueError, r"gives 0 values for 2 outer steps"),
    ("far-sample-empty", "FARTransformer.sample", "0 class labels",
     lambda c: c.farm.sample([], num_steps=1, diffusion_steps=1), ValueError, r"class_labels is empty"),
    ("far-sample-callback-nan", "FARTransformer.sample", "callback returning NaN latents",
     lambda c: c.farm.sample([0], num_steps=1, diffusion_steps=1, callback=lambda s, l, x: x * NAN), ValueError,
     r"latents returned by the callback contains NaN"),
    ("far-forward-nan", "FARTransformer.forward", "NaN latents (was a NaN loss)",
     lambda c: c.farm(torch.full((2, 2, 4, 4), NAN), [0, 1]), ValueError, r"latents contains NaN or inf"),
    ("far-forward-empty", "FARTransformer.forward", "0 latents",
     lambda c: c.farm(c.latents[:0], [0]), ValueError, r"empty batch"),
    ("far-forward-levels-float", "FARTransformer.forward", "float levels (were truncated)",
     lambda c: c.farm(c.latents, [0, 1], levels=torch.tensor([0.5, 1.5])), ValueError, r"levels\.long\(\)"),
    ("far-forward-shape", "FARTransformer.forward", "latents of the wrong shape",
     lambda c: c.farm(torch.randn(2, 3, 4, 4), [0, 1]), ValueError, r"latents must have shape \(B, 2, 4, 4\)"),
    ("far-forward-text-nan", "FARTransformer.forward", "NaN encoder_hidden_states",
     lambda c: c.text.transformer(c.latents, encoder_hidden_states=torch.full((2, 3, 32), NAN)), ValueError,
     r"encoder_hidden_states contains NaN"),
    # ---------------------------------------------------------------- FARPipeline
    ("far-guidance-nan", "FARPipeline.__call__", "guidance_scale=NaN (was NaN images)",
     lambda c: c.far([0, 1], guidance_scale=NAN, **FAR_FAST), ValueError, r"guidance_scale must be a finite number"),
    ("far-guidance-inf", "FARPipeline.__call__", "guidance_scale=inf",
     lambda c: c.far([0, 1], guidance_scale=INF, **FAR_FAST), ValueError, r"guidance_scale must be a finite number"),
    ("far-temperature-inf", "FARPipeline.__call__", "temperature=inf",
     lambda c: c.far([0], temperature=INF, **FAR_FAST), ValueError, r"temperature must be a finite number"),
    ("far-steps", "FARPipeline.__call__", "num_inference_steps=5 > F = 4",
     lambda c: c.far([0], num_inference_steps=5, diffusion_steps=1), ValueError, r"num_steps must be an int in \[1, 4\]"),
    ("far-diffusion-steps", "FARPipeline.__call__", "diffusion_steps='cosine'",
     lambda c: c.far([0], num_inference_steps=1, diffusion_steps="cosine"), ValueError,
     r"diffusion_steps must be 'linear', an int or one int per outer step"),
    ("far-output-type", "FARPipeline.__call__", "output_type='jpeg'",
     lambda c: c.far([0], output_type="jpeg"), ValueError, r"output_type must be one of"),
    ("far-empty", "FARPipeline.__call__", "class_labels=[]",
     lambda c: c.far([], **FAR_FAST), ValueError, r"class_labels is empty"),
    ("far-float-id", "FARPipeline.__call__", "class id 1.5",
     lambda c: c.far([1.5], **FAR_FAST), TypeError, r"got float 1.5"),
    ("far-unknown-name", "FARPipeline.__call__", "misspelt class name",
     lambda c: c.far(["circel"], **FAR_FAST), ValueError, r"did you mean \['circle'\]"),
    ("far-generator-list", "FARPipeline.__call__", "1 generator in a list for 2 images",
     lambda c: c.far([0, 1], generator=[seeded()], **FAR_FAST), ValueError,
     r"got 1 generator for 2 images; pass one per image or a single generator"),
    ("far-callback-return", "FARPipeline.__call__", "callback returning an int",
     lambda c: c.far([0], callback_on_step_end=lambda *args: 5, **FAR_FAST), TypeError, r"None or a dict"),
    ("far-prompt-class-model", "FARPipeline.__call__", "prompt for a class-only model",
     lambda c: c.far([0], prompt="up", **FAR_FAST), ValueError, r"class-conditional only, so it cannot take prompt"),
    ("far-prompt-no-encoder", "FARPipeline.__call__", "prompt without a text encoder",
     lambda c: c.text(prompt="up", **FAR_FAST), ValueError, r"has no text_encoder / tokenizer.*prompt_embeds"),
    ("far-prompt-embeds-width", "FARPipeline.__call__", "prompt_embeds of width 16 for 32",
     lambda c: c.text(prompt_embeds=torch.randn(2, 3, 16), **FAR_FAST), ValueError,
     r"hidden size 16 but this model's cross_attention_dim is 32"),
    ("far-prompt-embeds-nan", "FARPipeline.__call__", "NaN prompt_embeds",
     lambda c: c.text(prompt_embeds=torch.full((2, 3, 32), NAN), **FAR_FAST), ValueError, r"contains NaN"),
    ("far-prompt-embeds-empty", "FARPipeline.__call__", "0 rows of prompt_embeds",
     lambda c: c.text(prompt_embeds=torch.randn(0, 3, 32), **FAR_FAST), ValueError, r"empty batch"),
    ("far-prompt-mask-shape", "FARPipeline.__call__", "prompt_attention_mask of the wrong shape",
     lambda c: c.text(prompt_embeds=torch.randn(2, 3, 32), prompt_attention_mask=torch.ones(2, 4), **FAR_FAST),
     ValueError, r"encoder_attention_mask must have shape \(B, T\) = \(2, 3\)"),
    ("far-no-prompt", "FARPipeline.__call__", "text model without prompt",
     lambda c: c.text(**FAR_FAST), ValueError, r"text-conditional.*pass prompt"),
    ("far-encode-prompt-int", "FARPipeline.encode_prompt", "prompt=3",
     lambda c: encode_prompt(None, None, 3),
     ValueError, r"prompt must be a string or a non-empty list of strings"),
    ("far-encode-nan", "FARPipeline.encode", "NaN pixels (were NaN latents)",
     lambda c: c.far.encode(torch.full((2, 3, 16, 16), NAN)), ValueError, r"images contains NaN or inf"),
    ("far-encode-0-255", "FARPipeline.encode", "float pixels in [0, 255]",
     lambda c: c.far.encode(torch.rand(2, 3, 16, 16) * 255), ValueError, r"\[0, 1\].*x / 255"),
    ("far-encode-4ch", "FARPipeline.encode", "4-channel tensor",
     lambda c: c.far.encode(torch.rand(2, 4, 16, 16)), ValueError, r"4 channels but the model expects 3"),
    ("far-encode-empty", "FARPipeline.encode", "0 images",
     lambda c: c.far.encode(torch.rand(0, 3, 16, 16)), ValueError, r"empty batch"),
    ("far-decode-latents-channels", "FARPipeline.decode_latents", "3 latent channels for 2",
     lambda c: c.far.decode_latents(torch.randn(2, 3, 4, 4)), ValueError, r"latents must be a \(B, 2, h, w\) tensor"),
    ("far-decode-latents-nan", "FARPipeline.decode_latents", "NaN latents",
     lambda c: c.far.decode_latents(torch.full((2, 2, 4, 4), NAN)), ValueError, r"latents contains NaN"),
    ("far-decode-latents-int", "FARPipeline.decode_latents", "integer latents",
     lambda c: c.far.decode_latents(torch.ones(2, 2, 4, 4, dtype=torch.long)), ValueError, r"latents\.float\(\)"),
    ("far-reconstruct", "FARPipeline.reconstruct", "a SpectralAR method",
     lambda c: c.far.reconstruct(c.img), AttributeError, r"SpectralARPipeline method.*decode_latents\(pipe.encode"),
    ("far-super-resolve", "FARPipeline.super_resolve", "a SpectralAR method",
     lambda c: c.far.super_resolve(c.img), AttributeError, r"SpectralARPipeline method"),
]


@pytest.mark.parametrize("call, error, pattern", [pytest.param(*case[3:], id=case[0]) for case in CASES])
def test_bad_input_raises_one_clear_error(c, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(c)


def test_case_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------------------------------
# Files: from_pretrained of missing / wrong / corrupt directories names the file and the fix
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(c, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    c.sar.save_pretrained(root / "sar")
    c.far.save_pretrained(root / "far")
    return root


def _truncate(path, keep):
    """Keep the first `keep` bytes (negative: drop the last `-keep`), as an interrupted copy would."""
    path.write_bytes(path.read_bytes()[:keep])


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# (id, entry point, source ("sar" / "far"), mutate(directory), load(directory), exception, regex)
FILE_CASES = [
    ("missing-dir", "SpectralARPipeline.from_pretrained", "sar", None, lambda d: SpectralARPipeline.from_pretrained(
        d.parent / "nope"), FileNotFoundError, r"No such directory: .*nope"),
    ("missing-dir-model", "SpectralTokenizer.from_pretrained", "sar", None, lambda d: SpectralTokenizer.from_pretrained(
        str(d / "nope")), FileNotFoundError, r"No such directory"),
    ("far-dir-to-sar", "SpectralARPipeline.from_pretrained", "far", None, SpectralARPipeline.from_pretrained,
     ValueError, r"model_index.json describes a 'FARPipeline' pipeline.*FARPipeline.from_pretrained"),
    ("sar-dir-to-far", "FARPipeline.from_pretrained", "sar", None, FARPipeline.from_pretrained,
     ValueError, r"describes a 'SpectralARPipeline' pipeline.*SpectralARPipeline.from_pretrained"),
    ("tokenizer-dir-to-pipeline", "SpectralARPipeline.from_pretrained", "sar", None,
     lambda d: SpectralARPipeline.from_pretrained(d / "tokenizer"), OSError,
     r"single component \(SpectralTokenizer\).*SpectralTokenizer.from_pretrained"),
    ("pipeline-dir-to-tokenizer", "SpectralTokenizer.from_pretrained", "sar", None,
     SpectralTokenizer.from_pretrained, OSError, r"pipeline directory.*subfolder='tokenizer'"),
    ("tokenizer-dir-to-generator", "SpectralARForCausalLM.from_pretrained", "sar", None,
     lambda d: SpectralARForCausalLM.from_pretrained(d / "tokenizer"), ValueError,
     r"model_type 'spectral_tokenizer', not 'spectralar'.*SpectralTokenizer.from_pretrained"),
    ("tokenizer-dir-to-far", "FARTransformer.from_pretrained", "sar", None,
     lambda d: FARTransformer.from_pretrained(d / "tokenizer"), ValueError, r"not 'far'"),
    ("file-not-dir", "SpectralTokenizer.from_pretrained", "sar", None,
     lambda d: SpectralTokenizer.from_pretrained(d / "tokenizer" / "config.json"), NotADirectoryError, r"is a file"),
    ("truncated-safetensors", "SpectralARPipeline.from_pretrained", "sar",
     lambda d: _truncate(d / "tokenizer" / "model.safetensors", 1000), SpectralARPipeline.from_pretrained,
     OSError, r"tokenizer/model.safetensors is not a valid safetensors file.*truncated or corrupt"),
    ("truncated-tail-safetensors", "SpectralTokenizer.from_pretrained", "sar",
     lambda d: _truncate(d / "tokenizer" / "model.safetensors", -100),
     lambda d: SpectralTokenizer.from_pretrained(d / "tokenizer"), OSError, r"describes \d+ bytes but the file has"),
    ("empty-safetensors", "SpectralARForCausalLM.from_pretrained", "sar",
     lambda d: (d / "transformer" / "model.safetensors").write_bytes(b""),
     lambda d: SpectralARForCausalLM.from_pretrained(d / "transformer"), OSError, r"fewer than the 8-byte header"),
    ("missing-weights", "SpectralARPipeline.from_pretrained", "sar",
     lambda d: (d / "transformer" / "model.safetensors").unlink(), SpectralARPipeline.from_pretrained,
     FileNotFoundError, r"transformer has config.json but no weights"),
    ("config-invalid-json", "SpectralARPipeline.from_pretrained", "sar",
     lambda d: (d / "tokenizer" / "config.json").write_text("{not json"), SpectralARPipeline.from_pretrained,
     OSError, r"tokenizer/config.json is not valid JSON"),
    ("config-wrong-type", "SpectralTokenizer.from_pretrained", "sar",
     lambda d: _edit_json(d / "tokenizer" / "config.json", image_size="32"),
     lambda d: SpectralTokenizer.from_pretrained(d / "tokenizer"), ValueError,
     r"config.json: SpectralTokenizerConfig.image_size must be int, got str '32'"),
    ("config-weights-mismatch", "SpectralARForCausalLM.from_pretrained", "sar",
     lambda d: _edit_json(d / "transformer" / "config.json", vocab_size=999),
     lambda d: SpectralARForCausalLM.from_pretrained(d / "transformer"), ValueError,
     r"weights in .*transformer do not fit the sizes in its config.json"),
    ("index-invalid-json", "SpectralARPipeline.from_pretrained", "sar",
     lambda d: (d / "model_index.json").write_text("{oops"), SpectralARPipeline.from_pretrained, OSError,
     r"model_index.json is not valid JSON"),
    ("index-list", "FARPipeline.from_pretrained", "far",
     lambda d: (d / "model_index.json").write_text("[]"), FARPipeline.from_pretrained, OSError,
     r"model_index.json must hold a JSON object"),
    ("index-wrong-entry", "SpectralARPipeline.from_pretrained", "sar",
     lambda d: _edit_json(d / "model_index.json", tokenizer="x"), SpectralARPipeline.from_pretrained, ValueError,
     r"entry 'tokenizer' must be \[library, class name\]"),
    ("index-missing-component", "FARPipeline.from_pretrained", "far",
     lambda d: _edit_json(d / "model_index.json", vae=[None, None]), FARPipeline.from_pretrained, ValueError,
     r"names no \['vae'\] component"),
    ("missing-vae-folder", "FARPipeline.from_pretrained", "far",
     lambda d: shutil.rmtree(d / "vae"), FARPipeline.from_pretrained, FileNotFoundError,
     r"names a 'vae' component \(AutoencoderKL\) but .*vae is missing"),
    ("truncated-vae", "FARPipeline.from_pretrained", "far",
     lambda d: _truncate(d / "vae" / "diffusion_pytorch_model.safetensors", 500), FARPipeline.from_pretrained,
     OSError, r"vae/diffusion_pytorch_model.safetensors is not a valid safetensors file"),
    ("scheduler-invalid-json", "FARPipeline.from_pretrained", "far",
     lambda d: (d / "scheduler" / "scheduler_config.json").write_text("{x"), FARPipeline.from_pretrained, OSError,
     r"scheduler/scheduler_config.json is not valid JSON"),
]


@pytest.mark.parametrize("source, mutate, load, error, pattern",
                         [pytest.param(*case[2:], id=case[0]) for case in FILE_CASES])
def test_bad_directory_names_the_file(saved, tmp_path, source, mutate, load, error, pattern):
    directory = tmp_path / source
    shutil.copytree(saved / source, directory)
    if mutate is not None:
        mutate(directory)
    with pytest.raises(error, match=pattern):
        load(directory)


def test_good_directories_still_load(saved, c):
    loaded = SpectralARPipeline.from_pretrained(str(saved / "sar"))
    assert torch.equal(loaded.tokenizer.decode(c.codes).reconstruction, c.tok.decode(c.codes).reconstruction)
    assert isinstance(FARPipeline.from_pretrained(saved / "far").transformer, FARTransformer)
    assert isinstance(SpectralTokenizer.from_pretrained(saved / "sar", subfolder="tokenizer"), SpectralTokenizer)


# ---------------------------------------------------------------------------------------------------------------
# The good paths next to each fix
# ---------------------------------------------------------------------------------------------------------------


def test_float64_and_float16_pixels_are_converted(c):
    codes = c.tok.encode(c.x).codes
    assert torch.equal(c.tok.encode(c.x.double()).codes, codes)
    assert c.tok.encode(c.x.half()).codes.shape == codes.shape  # half-precision rounding may move a code
    assert torch.isfinite(c.tok(c.x.double(), num_tokens=4).loss)
    assert torch.equal(c.sar.encode(c.img.double()), c.sar.encode(c.img))
    latents = torch.randn(2, 2, 4, 4, generator=seeded(3))
    assert torch.equal(c.farm(latents.double(), [0, 1], generator=seeded(4)).loss,
                       c.farm(latents, [0, 1], generator=seeded(4)).loss)
    torch.testing.assert_close(c.far.decode_latents(latents.double()), c.far.decode_latents(latents))


def test_pixels_within_the_rounding_tolerance_are_accepted(c):
    nudged = c.x.clone()
    nudged[0, 0, 0, 0], nudged[0, 0, 0, 1] = 1.0005, -1.0005
    assert c.tok.encode(nudged).codes.shape == (2, 16)
    nudged = c.img.clone()
    nudged[0, 0, 0, 0], nudged[0, 0, 0, 1] = 1.0005, -0.0005
    assert c.sar.encode(nudged).shape == (2, 16)
    uint8 = (c.img * 255).round().to(torch.uint8)  # diffusers alone would read uint8 as floats in [0, 255]
    assert torch.equal(c.sar.encode(uint8), c.sar.encode(uint8.float() / 255))
    array = uint8.permute(0, 2, 3, 1).numpy()
    assert torch.equal(c.sar.encode(array), c.sar.encode(array.astype(np.float32) / 255))
    assert torch.equal(c.sar.encode(array), c.sar.encode(uint8))
    assert c.sar.encode(Image.new("RGB", (40, 40))).shape == (1, 16)  # PIL: resized as before


def test_valid_sampling_settings_still_work(c):
    reference = c.sar([0, 1], generator=seeded(5), output_type="pt", top_p=None).codes
    # top_p=1.0 / top_k=0 filter nothing and switch off a saved filter, also through resolved settings passed back
    # in (as sample.py does)
    generation = c.sar.transformer.generation_config
    unresolved = dict(guidance_scale=None, guidance_schedule=None, temperature=None, top_k=None, top_p=None)
    for name, saved_filter, off in (("top_p", 0.05, 1.0), ("top_k", 1, 0)):
        assert torch.equal(c.sar([0, 1], generator=seeded(5), output_type="pt", **{name: off}).codes, reference)
        saved = getattr(generation, name)
        try:
            setattr(generation, name, saved_filter)
            settings = c.sar._sampling_settings(**{**unresolved, name: off})
            assert settings[name] == off
            assert torch.equal(c.sar([0, 1], generator=seeded(5), output_type="pt", **settings).codes, reference)
            assert not torch.equal(c.sar([0, 1], generator=seeded(5), output_type="pt").codes, reference)
        finally:
            setattr(generation, name, saved)
    assert torch.equal(c.gen.sample(np.array([0, 1]), generator=seeded(5), top_k=np.int64(256)),
                       c.gen.sample([0, 1], generator=seeded(5), top_k=256))
    assert c.gen.sample(torch.tensor([0]), guidance_scale=torch.tensor(2.0), generator=seeded(6)).shape == (1, 16)
    assert c.sar([10], generator=seeded(7), output_type="pt").images.shape == (1, 3, 32, 32)  # 10 = null class
    assert c.tok.decode(c.codes, np.int64(4)).num_tokens.tolist() == [4, 4]
    latents = c.far([0, "square"], guidance_scale=2.0, temperature=(0.8, 1.0), generator=seeded(8),
                    **FAR_FAST).latents
    assert latents.shape == (2, 2, 4, 4) and bool(torch.isfinite(latents).all())
    assert not hasattr(c.far, "reconstruct") and hasattr(c.sar, "reconstruct")


def test_intact_weight_files_pass_the_header_check(saved):
    """The directory checks read JSON and safetensors headers only; every file save_pretrained wrote passes."""
    from spectralar_hf.utils import check_safetensors_file

    paths = sorted(saved.rglob("*.safetensors"))
    assert len(paths) == 4  # tokenizer, transformer; FAR transformer, vae
    for path in paths:
        check_safetensors_file(path)
