"""Text conditioning of FAR (FAR §5.3, text-to-image): cross-attention from every encoder and decoder block to a
transformers text encoder's last hidden states, the always-visible null text token (text dropout, CFG), FARPipeline
with a text encoder and tokenizer (prompts, prompt_embeds, save/load), backward compatibility of class-only models,
a tiny text FAR that learns prompt-dependent latents, clear errors, and train_far.py with --text_encoder.

Everything is offline and tiny: a 1-layer BERT (32 wide) with a tokenizer built from a vocab.txt written here, 2 x 4 x 4
latents, one CPU thread.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from test_far import spread as spread_weights
from diffusers import AutoencoderKL
from transformers import BertConfig, BertModel, BertTokenizer

from spectralar_hf import FARConfig, FARPipeline, FARTransformer, build_noise_scheduler

ROOT = Path(__file__).parents[1]
FAR_SCRIPT = str(ROOT / "examples" / "train_far.py")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "photo", "of", "up", "down", "cat", "dog", "t", "-",
         "/", "shirt", "top", "trouser", "pullover", "dress", "coat", "sandal", "sneaker", "bag", "ankle", "boot"]
FAST = dict(num_inference_steps=2, diffusion_steps=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    """A tiny BertModel (hidden size 32) and its BertTokenizer, saved as a local transformers model directory."""
    root = tmp_path_factory.mktemp("text-encoder")
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(root / "vocab.txt"), model_max_length=16)
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32)).eval()
    encoder.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def text_parts(text_dir):
    return BertModel.from_pretrained(text_dir).eval(), BertTokenizer.from_pretrained(text_dir)


def text_config(**overrides) -> FARConfig:
    values = dict(latent_channels=2, latent_size=4, num_classes=0, class_buffer_size=2, hidden_size=32,
                  encoder_layers=1, decoder_layers=1, num_attention_heads=2, head_depth=2, head_width=32,
                  diffusion_batch_mul=1, beta_schedule="linear", cross_attention_dim=32)
    values.update(overrides)
    return FARConfig(**values)


def spread(model: FARTransformer, std: float = 0.1) -> FARTransformer:
    """Random non-zero weights everywhere (the head's AdaLN layers and the cross-attention outputs start at zero)."""
    return spread_weights(model, std).eval()


def tiny_vae(in_channels: int = 3, sample_size: int = 16) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=in_channels, out_channels=in_channels,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(8, 8, 8), layers_per_block=1,
                         latent_channels=2, norm_num_groups=4, sample_size=sample_size).eval()  # 16 px -> 4x4


def make_pipe(text_parts, transformer: FARTransformer) -> FARPipeline:
    encoder, tokenizer = text_parts
    pipe = FARPipeline(vae=tiny_vae(), transformer=transformer, scheduler=build_noise_scheduler(transformer.config),
                       text_encoder=encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(text_parts) -> FARPipeline:
    return make_pipe(text_parts, spread(FARTransformer(text_config())))


def tokens_and_labels(model: FARTransformer, batch: int):
    config = model.config
    tokens = torch.randn(batch, config.num_tokens, config.token_dim, generator=seeded(1))
    return tokens, torch.full((batch,), config.null_class_id)


# ---------------------------------------------------------------------------------------------------------------
# (a) cross-attention conditions on the text; padding is ignored
# ---------------------------------------------------------------------------------------------------------------


def test_cross_attention_conditions_on_the_text_and_ignores_padding(pipe):
    model = pipe.transformer
    assert all(hasattr(block, "cross_attn") for block in [*model.encoder_layers, *model.decoder_layers])
    states, mask = pipe.encode_prompt(["up", "down"])
    tokens, labels = tokens_and_labels(model, 2)
    up_down = model.conditions(tokens, labels, None, states, mask)
    same = model.conditions(tokens, labels, None, states[[0, 0]], mask[[0, 0]])
    assert not torch.allclose(up_down[1], same[1], atol=1e-3)  # another prompt, other conditions
    # padding: 3 extra positions with huge random states but mask 0 change nothing
    padded_states = torch.cat([states, 100 * torch.randn(2, 3, 32, generator=seeded(2))], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=mask.dtype)], dim=1)
    torch.testing.assert_close(model.conditions(tokens, labels, None, padded_states, padded_mask), up_down,
                               rtol=0, atol=1e-6)
    # the same through the tokenizer: "up" alone, or padded next to a longer prompt
    alone = model.conditions(tokens[:1], labels[:1], None, *pipe.encode_prompt("up"))
    batched_states, batched_mask = pipe.encode_prompt(["up", "a photo of a cat dog"])
    assert batched_mask[0].tolist()[3:] == [0] * (batched_mask.shape[1] - 3)  # [CLS] up [SEP] + padding
    torch.testing.assert_close(model.conditions(tokens, labels, None, batched_states, batched_mask)[:1], alone,
                               rtol=0, atol=1e-5)
    # both stages cross-attend: silencing either one's cross-attention changes the conditions
    for block in (model.encoder_layers[0], model.decoder_layers[0]):
        saved = block.cross_attn.proj.weight.detach().clone(), block.cross_attn.proj.bias.detach().clone()
        with torch.no_grad():
            block.cross_attn.proj.weight.zero_()
            block.cross_attn.proj.bias.zero_()
            assert not torch.allclose(model.conditions(tokens, labels, None, states, mask), up_down, atol=1e-4)
            block.cross_attn.proj.weight.copy_(saved[0])
            block.cross_attn.proj.bias.copy_(saved[1])


# ---------------------------------------------------------------------------------------------------------------
# (b) dropped text and unconditional rows see only the null token
# ---------------------------------------------------------------------------------------------------------------


def test_dropped_text_and_unconditional_rows_see_only_the_null_token(pipe, monkeypatch):
    model = pipe.transformer
    tokens, labels = tokens_and_labels(model, 2)
    states, mask = pipe.encode_prompt(["up", "a photo of a cat"])
    hidden = model.conditions(tokens, labels, None, states, torch.zeros_like(mask))
    other = model.conditions(tokens, labels, None, torch.randn(2, 7, 32, generator=seeded(3)), torch.zeros(2, 7))
    empty = model.conditions(tokens, labels, None, torch.zeros(2, 0, 32), None)  # T = 0: the null token only
    assert torch.isfinite(hidden).all()  # no all-masked softmax
    torch.testing.assert_close(other, hidden, rtol=0, atol=1e-6)
    torch.testing.assert_close(empty, hidden, rtol=0, atol=1e-6)
    assert not torch.allclose(model.conditions(tokens, labels, None, states, mask), hidden, atol=1e-3)

    seen = []

    def record(target: FARTransformer) -> None:
        original = target.conditions

        def conditions(tokens, class_labels, mask=None, encoder_hidden_states=None, encoder_attention_mask=None):
            seen.append((class_labels.clone(), encoder_hidden_states, encoder_attention_mask.clone()))
            return original(tokens, class_labels, mask, encoder_hidden_states, encoder_attention_mask)

        monkeypatch.setattr(target, "conditions", conditions)

    # training: the class-dropout draw hides the text of its samples (only the null token stays visible)
    both = FARTransformer(text_config(num_classes=3, class_dropout_prob=0.5)).train()
    record(both)
    record(model)
    states64 = torch.randn(64, 5, 32, generator=seeded(4))
    mask64 = torch.ones(64, 5, dtype=torch.long)
    out = both(torch.randn(64, 2, 4, 4, generator=seeded(5)), torch.arange(64) % 3, encoder_hidden_states=states64,
               encoder_attention_mask=mask64, generator=seeded(6))
    labels_seen, _, mask_seen = seen.pop()
    dropped = out.text_dropped
    assert 16 < int(dropped.sum()) < 48
    assert torch.equal(~mask_seen.any(dim=1), dropped) and bool(mask_seen[~dropped].all())
    assert torch.equal(labels_seen == 3, dropped)  # one draw drops class and text together
    assert not both.eval()(torch.randn(4, 2, 4, 4), torch.arange(4) % 3, encoder_hidden_states=states64[:4],
                           generator=seeded(6)).text_dropped.any()  # no dropout in eval mode
    # CFG: conditional rows, then the same text fully masked with the null class, in ONE batch
    seen.clear()
    model.sample(encoder_hidden_states=states, encoder_attention_mask=mask, guidance_scale=2.0, num_steps=1,
                 diffusion_steps=2, generator=seeded(7))
    (rows, rows_states, rows_mask), = seen
    assert rows.tolist() == [0, 0, 0, 0] and torch.equal(rows_states, torch.cat([states, states]))
    assert torch.equal(rows_mask[:2], mask.bool()) and not rows_mask[2:].any()


# ---------------------------------------------------------------------------------------------------------------
# (c) guidance 1 = conditional only; seeds
# ---------------------------------------------------------------------------------------------------------------


def test_guidance_one_is_conditional_only_and_seeds_are_reproducible(pipe):
    prompts = ["up", "a photo of a dog"]
    first = pipe(prompt=prompts, guidance_scale=1.0, generator=seeded(8), output_type="latent", **FAST).latents
    states, mask = pipe.encode_prompt(prompts)
    direct = pipe.transformer.sample(encoder_hidden_states=states, encoder_attention_mask=mask, guidance_scale=1.0,
                                     num_steps=2, diffusion_steps=3, generator=seeded(8))
    assert torch.equal(first, direct)
    embeds = pipe(prompt_embeds=states, prompt_attention_mask=mask, guidance_scale=1.0, generator=seeded(8),
                  output_type="latent", **FAST).latents
    assert torch.equal(first, embeds)
    again = pipe(prompt=prompts, guidance_scale=1.0, generator=seeded(8), output_type="np", **FAST).images
    assert np.array_equal(again, pipe(prompt=prompts, guidance_scale=1.0, generator=seeded(8), output_type="np",
                                      **FAST).images)
    assert not np.allclose(again, pipe(prompt=prompts, guidance_scale=1.0, generator=seeded(9), output_type="np",
                                       **FAST).images, atol=1e-3)
    guided = pipe(prompt=prompts, guidance_scale=3.0, generator=seeded(8), output_type="latent", **FAST).latents
    assert torch.isfinite(guided).all() and not torch.allclose(guided, first, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# (d) save / load
# ---------------------------------------------------------------------------------------------------------------


def test_text_pipeline_save_load_gives_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["tokenizer"][0] == "transformers"
    assert index["transformer"] == ["spectralar_hf", "FARTransformer"]
    loaded = FARPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.text_encoder, BertModel) and loaded.transformer.config.cross_attention_dim == 32
    expected = pipe(prompt=["up", "down"], guidance_scale=2.0, generator=seeded(10), output_type="np", **FAST).images
    assert np.array_equal(loaded(prompt=["up", "down"], guidance_scale=2.0, generator=seeded(10), output_type="np",
                                 **FAST).images, expected)
    card = str(loaded.model_card("me/far-text"))  # the usage snippet prompts a text model instead of naming classes
    assert 'images = pipe(prompt=["a red boot", "a striped shirt"]' in card and "class_labels" not in card


def test_class_only_pipeline_saves_and_loads_as_before(tmp_path):
    config = text_config(num_classes=2, cross_attention_dim=None)
    pipe = FARPipeline(vae=tiny_vae(), transformer=spread(FARTransformer(config)),
                       scheduler=build_noise_scheduler(config))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder is None and pipe.tokenizer is None
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert set(index) == {"_class_name", "_diffusers_version", "vae", "transformer", "scheduler"}
    assert sorted(os.listdir(tmp_path / "pipe")) == ["model_index.json", "pipeline_far.py", "scheduler", "transformer",
                                                     "vae"]  # pipeline_far.py: for DiffusionPipeline (test_hub_native)
    loaded = FARPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.text_encoder is None and loaded.tokenizer is None
    assert np.array_equal(loaded([0, 1], guidance_scale=2.0, generator=seeded(11), output_type="np", **FAST).images,
                          pipe([0, 1], guidance_scale=2.0, generator=seeded(11), output_type="np", **FAST).images)
    again = FARPipeline(**loaded.components)  # the components round trip (text ones None)
    assert again.text_encoder is None and set(again.config) == set(loaded.config) - {"_name_or_path"}


# ---------------------------------------------------------------------------------------------------------------
# (e) class-only models are unchanged
# ---------------------------------------------------------------------------------------------------------------

# FARTransformer(FARConfig.from_preset("tiny")).state_dict() keys before text conditioning existed.
CLASS_ONLY_KEYS = """
encoder_position_embedding mask_token decoder_position_embedding diffusion_position_embedding class_embedding.weight
token_embedding.weight token_embedding.bias encoder_input_norm.weight encoder_input_norm.bias
encoder_layers.0.norm1.weight encoder_layers.0.norm1.bias encoder_layers.0.attn.qkv.weight
encoder_layers.0.attn.qkv.bias encoder_layers.0.attn.proj.weight encoder_layers.0.attn.proj.bias
encoder_layers.0.norm2.weight encoder_layers.0.norm2.bias encoder_layers.0.mlp.0.weight encoder_layers.0.mlp.0.bias
encoder_layers.0.mlp.2.weight encoder_layers.0.mlp.2.bias encoder_norm.weight encoder_norm.bias
decoder_embedding.weight decoder_embedding.bias decoder_layers.0.norm1.weight decoder_layers.0.norm1.bias
decoder_layers.0.attn.qkv.weight decoder_layers.0.attn.qkv.bias decoder_layers.0.attn.proj.weight
decoder_layers.0.attn.proj.bias decoder_layers.0.norm2.weight decoder_layers.0.norm2.bias
decoder_layers.0.mlp.0.weight decoder_layers.0.mlp.0.bias decoder_layers.0.mlp.2.weight decoder_layers.0.mlp.2.bias
decoder_norm.weight decoder_norm.bias diffusion_head.time_embedding.linear_1.weight
diffusion_head.time_embedding.linear_1.bias diffusion_head.time_embedding.linear_2.weight
diffusion_head.time_embedding.linear_2.bias diffusion_head.condition_embedding.weight
diffusion_head.condition_embedding.bias diffusion_head.level_embedding.weight diffusion_head.input_proj.weight
diffusion_head.input_proj.bias diffusion_head.blocks.0.norm.weight diffusion_head.blocks.0.norm.bias
diffusion_head.blocks.0.mlp.0.weight diffusion_head.blocks.0.mlp.0.bias diffusion_head.blocks.0.mlp.2.weight
diffusion_head.blocks.0.mlp.2.bias diffusion_head.blocks.0.adaLN_modulation.1.weight
diffusion_head.blocks.0.adaLN_modulation.1.bias diffusion_head.blocks.1.norm.weight diffusion_head.blocks.1.norm.bias
diffusion_head.blocks.1.mlp.0.weight diffusion_head.blocks.1.mlp.0.bias diffusion_head.blocks.1.mlp.2.weight
diffusion_head.blocks.1.mlp.2.bias diffusion_head.blocks.1.adaLN_modulation.1.weight
diffusion_head.blocks.1.adaLN_modulation.1.bias diffusion_head.final_layer.linear.weight
diffusion_head.final_layer.linear.bias diffusion_head.final_layer.adaLN_modulation.1.weight
diffusion_head.final_layer.adaLN_modulation.1.bias
""".split()


def test_class_only_model_is_unchanged():
    """Same parameter names (in order), same random-number use and the same numbers as the class-only code: the
    pinned values were computed with it (torch 2.13 CPU, one thread), first before text conditioning existed, then
    again after two deliberate changes of the class-only sampler and loss (the inference mask's fixed token order
    and the reference code's FTL indexing)."""
    assert len(CLASS_ONLY_KEYS) == 68
    torch.manual_seed(0)
    model = FARTransformer(FARConfig.from_preset("tiny", beta_schedule="linear"))
    assert list(model.state_dict()) == CLASS_ONLY_KEYS
    assert FARConfig.from_preset("tiny").cross_attention_dim is None
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    samples = model.eval().sample([1, 2, 10], num_steps=3, diffusion_steps=4, guidance_scale=2.0,
                                  mask_schedule="cosine", generator=seeded(0))
    assert samples.double().sum().item() == pytest.approx(853.1383803486824, rel=1e-5)
    torch.testing.assert_close(samples[0, 0, 0, :4], torch.tensor([-137.99691772460938, 93.42498779296875,
                                                                   15.252911567687988, -36.5319938659668]),
                               rtol=1e-5, atol=1e-4)
    latents = torch.randn(2, 4, 8, 8, generator=seeded(1))
    output = model.train()(latents, torch.tensor([1, 2]), generator=seeded(2))
    assert output.loss.item() == pytest.approx(1.5518362522125244, rel=1e-6)
    assert output.levels.tolist() == [0, 7] and output.text_dropped is None
    assert len(output.to_tuple()) == 11  # no new entry in the tuple form


# ---------------------------------------------------------------------------------------------------------------
# (f) a tiny text FAR learns prompt-dependent latents
# ---------------------------------------------------------------------------------------------------------------


def test_tiny_text_far_learns_the_prompt(text_parts):
    """"up" -> latents around +1, "down" -> around -1 (std 0.3): 100 AdamW steps (the cross-attention outputs start at
    zero, so the untrained model ignores the text) move the sample means apart in the right direction."""
    pipe = make_pipe(text_parts, FARTransformer(text_config(head_width=64)))
    states, mask = pipe.encode_prompt(["up", "down"])
    model = pipe.transformer
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    generator = seeded(12)
    model.train()
    for _ in range(100):
        which = torch.randint(0, 2, (16,), generator=generator)
        sign = (1 - 2 * which).float().view(-1, 1, 1, 1)
        latents = sign + 0.3 * torch.randn(16, 2, 4, 4, generator=generator)
        loss = model(latents, encoder_hidden_states=states[which], encoder_attention_mask=mask[which],
                     generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    samples = pipe(prompt=["up"] * 16 + ["down"] * 16, diffusion_steps=20, generator=seeded(13),
                   output_type="latent").latents
    up, down = samples[:16].mean().item(), samples[16:].mean().item()
    assert up > 0.6 and down < -0.6, (up, down)
    assert samples[:16].std().item() < 0.6 and samples[16:].std().item() < 0.6


# ---------------------------------------------------------------------------------------------------------------
# class labels and text together
# ---------------------------------------------------------------------------------------------------------------


def test_class_labels_and_text_combine_when_the_model_has_both(text_parts):
    pipe = make_pipe(text_parts, spread(FARTransformer(text_config(num_classes=3, id2label={0: "a", 1: "b", 2: "c"}))))
    first = pipe(["a", 1], prompt=["up", "up"], guidance_scale=2.0, generator=seeded(14), output_type="latent",
                 **FAST).latents
    other = pipe(["b", 1], prompt=["up", "up"], guidance_scale=2.0, generator=seeded(14), output_type="latent",
                 **FAST).latents
    assert not torch.allclose(first[0], other[0], atol=1e-3) and torch.allclose(first[1], other[1], atol=1e-5)
    # without class labels every row uses the null class
    null = pipe(prompt=["up"], guidance_scale=1.0, generator=seeded(14), output_type="latent", **FAST).latents
    assert torch.equal(null, pipe([3], prompt=["up"], guidance_scale=1.0, generator=seeded(14),
                                  output_type="latent", **FAST).latents)
    with pytest.raises(ValueError, match="2 entries but there are 1 prompts"):
        pipe([0, 1], prompt="up")
    card = str(pipe.model_card("me/far-both"))  # the usage snippet passes both conditions
    assert 'images = pipe(class_labels=[0, 1], prompt=["a red boot", "a striped shirt"]' in card


# ---------------------------------------------------------------------------------------------------------------
# (g) clear errors
# ---------------------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(pipe, text_parts):
    text_model = pipe.transformer
    class_model = FARTransformer(text_config(num_classes=2, cross_attention_dim=None))
    latents, states = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 32)
    with pytest.raises(ValueError, match=r"no cross-attention \(config.cross_attention_dim is None\)"):
        class_model(latents, torch.tensor([0, 1]), encoder_hidden_states=states)
    with pytest.raises(ValueError, match="no cross-attention"):
        class_model.sample([0, 1], encoder_hidden_states=states, num_steps=1)
    with pytest.raises(ValueError, match="class_labels is required"):
        class_model(latents)
    with pytest.raises(ValueError, match="class_labels is required"):
        class_model.sample(num_steps=1)
    with pytest.raises(ValueError, match=r"text-conditional \(cross_attention_dim = 32\): pass encoder_hidden_states"):
        text_model(latents)
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        text_model.sample(num_steps=1)
    with pytest.raises(ValueError, match="hidden size 16 but this model's cross_attention_dim is 32"):
        text_model(latents, encoder_hidden_states=torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match=r"encoder_attention_mask must have shape \(B, T\) = \(2, 3\)"):
        text_model(latents, encoder_hidden_states=states, encoder_attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="not an additive mask"):
        text_model(latents, encoder_hidden_states=states, encoder_attention_mask=torch.full((2, 3), float("-inf")))
    with pytest.raises(ValueError, match="3 rows for a batch of 2"):
        text_model(latents, encoder_hidden_states=torch.randn(3, 3, 32))
    with pytest.raises(ValueError, match="no classes"):
        text_model(latents, torch.tensor([0, 0]), encoder_hidden_states=states)
    with pytest.raises(ValueError, match="cross_attention_dim must be a positive int"):
        text_config(cross_attention_dim=0)
    with pytest.raises(ValueError, match="only a text-conditional model"):
        text_config(cross_attention_dim=None)  # num_classes = 0
    # the pipeline
    encoder, tokenizer = text_parts
    class_pipe = FARPipeline(vae=tiny_vae(), transformer=class_model,
                             scheduler=build_noise_scheduler(class_model.config))
    with pytest.raises(ValueError, match="class-conditional only, so it cannot take prompt"):
        class_pipe([0], prompt="up")
    with pytest.raises(ValueError, match="cannot use a text encoder"):
        FARPipeline(vae=tiny_vae(), transformer=class_model, scheduler=class_pipe.scheduler, text_encoder=encoder,
                    tokenizer=tokenizer)
    with pytest.raises(ValueError, match="both a text_encoder and its tokenizer"):
        FARPipeline(vae=tiny_vae(), transformer=text_model, scheduler=pipe.scheduler, text_encoder=encoder)
    with pytest.raises(ValueError, match="hidden size 32 differs from the transformer's cross_attention_dim 16"):
        FARPipeline(vae=tiny_vae(), transformer=FARTransformer(text_config(cross_attention_dim=16)),
                    scheduler=pipe.scheduler, text_encoder=encoder, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="pass prompt"):
        pipe(**FAST)
    with pytest.raises(ValueError, match="no classes"):
        pipe([0], prompt="up")
    with pytest.raises(ValueError, match="either prompt or prompt_embeds"):
        pipe(prompt="up", prompt_embeds=states)
    no_encoder = FARPipeline(vae=tiny_vae(), transformer=text_model, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="has no text_encoder / tokenizer"):
        no_encoder(prompt="up")
    assert no_encoder(prompt_embeds=states, generator=seeded(15), output_type="latent", **FAST).latents.shape == (
        2, 2, 4, 4)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        pipe(prompt=[])


# ---------------------------------------------------------------------------------------------------------------
# (h) examples/train_far.py with a text encoder
# ---------------------------------------------------------------------------------------------------------------


def run_far_script(*args) -> None:
    import importlib.util

    from accelerate.state import AcceleratorState, GradientState

    spec = importlib.util.spec_from_file_location("train_far", FAR_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_train_far_script_with_a_text_encoder(text_dir, tmp_path, capsys):
    data = tmp_path / "idx"
    data.mkdir()
    write_idx_dataset(data, np.stack(blob_images(8, seed=4, size=16)), np.arange(8) % 4)
    vae_dir = tmp_path / "vae"
    tiny_vae(in_channels=1).save_pretrained(vae_dir)
    output = tmp_path / "run"
    run_far_script("--vae", vae_dir, "--idx_data_dir", data, "--preset", "tiny", "--output_dir", output,
                   "--text_encoder", text_dir, "--caption_template", "a photo of a {label}", "--max_train_steps", 3,
                   "--train_batch_size", 4, "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000,
                   "--lr_warmup_steps", 1, "--validation_classes", 0, 7, "--validation_images_per_class", 1,
                   "--validation_num_inference_steps", 2, "--validation_diffusion_steps", 2, "--guidance_scale", 2.0)
    records = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(np.isfinite(record["loss"]) for record in records)
    index = json.loads((output / "pipeline" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"] and index["tokenizer"][0] == "transformers"
    pipe = FARPipeline.from_pretrained(output / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    config = pipe.transformer.config
    assert (config.cross_attention_dim, config.num_classes, config.latent_size) == (32, 0, 4)
    images = pipe(prompt=["a photo of a Sneaker", "a photo of a T-shirt/top"], generator=seeded(16),
                  output_type="np", **FAST).images
    assert images.shape == (2, 16, 16, 1) and np.isfinite(images).all()
    assert list((output / "samples").glob("samples-*.png"))
    # caption flags need the text encoder, and the text encoder one caption source
    text = ["--text_encoder", str(text_dir)]
    for extra, message in ((["--caption_template", "a {label}"], "need --text_encoder"),
                           (text, "exactly one caption source"),
                           (text + ["--caption_template", "a {name}"], "must contain {label}")):
        with pytest.raises(SystemExit):
            run_far_script("--vae", vae_dir, "--idx_data_dir", data, "--output_dir", tmp_path / "bad", *extra)
        assert message in capsys.readouterr().err


def test_train_far_script_with_a_caption_column(text_dir, tmp_path):
    """Captions from a dataset column (an image folder with metadata.csv) are stored in the latent cache."""
    import datasets
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rows = ["file_name,label,caption"]
    for index, image in enumerate(blob_images(8, seed=5, size=16)):
        Image.fromarray(image).save(folder / f"{index}.png")
        rows.append(f"{index}.png,{index % 2},{'up' if index % 2 else 'down'} dog")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    vae_dir = tmp_path / "vae"
    tiny_vae(in_channels=1).save_pretrained(vae_dir)
    output = tmp_path / "run"
    run_far_script("--vae", vae_dir, "--train_data_dir", folder, "--preset", "tiny", "--output_dir", output,
                   "--text_encoder", text_dir, "--caption_column", "caption", "--max_train_steps", 2,
                   "--train_batch_size", 4, "--report_to", "none", "--validation_steps", 1000,
                   "--validation_images_per_class", 1, "--validation_num_inference_steps", 2,
                   "--validation_diffusion_steps", 2)
    cache = datasets.load_from_disk(str(output / "latents"))
    assert sorted(cache["caption"]) == ["down dog"] * 4 + ["up dog"] * 4
    assert json.loads((output / "latents" / "cache_info.json").read_text())["settings"]["caption_column"] == "caption"
    pipe = FARPipeline.from_pretrained(output / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(prompt="up dog", generator=seeded(17), output_type="np", **FAST).images.shape == (1, 16, 16, 1)
