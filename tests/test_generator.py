"""SpectralARForCausalLM: caching, CFG, determinism, block causality, class dropout, round trips, input checks."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from spectralar_hf import SpectralARConfig, SpectralARForCausalLM


def tiny(**overrides) -> SpectralARForCausalLM:
    """A tiny model with weights spread out, so that classes and codes change its outputs visibly (at VAR's
    initialisation the AdaLN gates are ~1e-5 and every class gives almost the same logits)."""
    torch.manual_seed(0)
    model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", **overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("log_scale"):
                parameter.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope="module")
def codes():
    return torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))


LABELS = torch.tensor([1, 5, 9])


def test_d16_preset_matches_var_d16_size():
    config = SpectralARConfig.from_preset("d16")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1024, 16, 16)
    with torch.device("meta"):
        model = SpectralARForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 300e6 < parameters < 320e6, parameters  # SpectralAR-d16: 310M (Table 2)
    assert SpectralARConfig.from_preset("d16-p4").num_steps == 16


@torch.no_grad()
@pytest.mark.parametrize("tokens_per_step", [1, 4])
def test_cached_logits_equal_uncached(codes, tokens_per_step):
    model = tiny(tokens_per_step=tokens_per_step)
    uncached = model(input_ids=codes, class_labels=LABELS, use_cache=False).logits  # (3, 16, V)
    assert uncached.shape == (3, 16, 256)
    cache = DynamicCache(config=model.config)
    pieces = [model(input_ids=codes[:, :0], class_labels=LABELS, past_key_values=cache).logits]
    for start in range(0, 16 - tokens_per_step, tokens_per_step):
        step_codes = codes[:, start : start + tokens_per_step]
        pieces.append(model(input_ids=step_codes, past_key_values=cache).logits)  # labels ride in the cache
    torch.testing.assert_close(torch.cat(pieces, dim=1), uncached, atol=1e-5, rtol=1e-5)



@torch.no_grad()
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_cache_is_accepted_under_both_transformers_names(codes, name):
    """transformers 5.24 passes the cache as `cache=`, older 5.x as `past_key_values=`: both give the cached
    logits, and the returned cache is the one given (under the installed version's output field)."""
    model = tiny()
    uncached = model(input_ids=codes, class_labels=LABELS, use_cache=False).logits
    cache = DynamicCache(config=model.config)
    first = model(input_ids=codes[:, :0], class_labels=LABELS, **{name: cache})
    assert first[_cache_field()] is cache
    rest = model(input_ids=codes[:, :15], **{name: cache}).logits
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), uncached, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="both cache and past_key_values"):
        model(input_ids=codes[:, :1], cache=cache, past_key_values=DynamicCache(config=model.config))


def _cache_field() -> str:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def test_generate_leaks_no_deprecation_warning(codes):
    """Neither forward (under either cache name) nor generate() makes transformers warn about renamed arguments or
    output fields: the user did nothing wrong."""
    import logging

    class Recorder(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: forget earlier tests' warnings
    recorder, library_logger = Recorder(), logging.getLogger("transformers")
    library_logger.addHandler(recorder)
    try:
        model = tiny()
        for name in ("cache", "past_key_values"):
            output = model(input_ids=codes[:, :4], class_labels=LABELS, **{name: DynamicCache(config=model.config)})
            assert output[_cache_field()] is not None
        model.generate(model.start_token_ids(LABELS), max_new_tokens=16, do_sample=False, guidance_scale=2.0)
    finally:
        library_logger.removeHandler(recorder)
    assert not [message for message in recorder.messages if "deprecated" in message.lower()], recorder.messages


@torch.no_grad()
def test_start_token_prompt_equals_class_labels(codes):
    model = tiny()
    with_labels = model(input_ids=codes, class_labels=LABELS, use_cache=False).logits
    with_start = model(input_ids=torch.cat([model.start_token_ids(LABELS), codes[:, :15]], 1), use_cache=False).logits
    torch.testing.assert_close(with_start, with_labels)


@torch.no_grad()
def test_block_causality_p4(codes):
    model = tiny(tokens_per_step=4)
    logits = model(input_ids=codes, class_labels=LABELS, use_cache=False).logits
    for group in range(4):
        changed = codes.clone()
        changed[:, 4 * group :] = (changed[:, 4 * group :] + 101) % 256
        other = model(input_ids=changed, class_labels=LABELS, use_cache=False).logits
        torch.testing.assert_close(other[:, : 4 * (group + 1)], logits[:, : 4 * (group + 1)])
        if group < 3:  # later groups do see the change
            assert not torch.allclose(other[:, 4 * (group + 1) :], logits[:, 4 * (group + 1) :])


@torch.no_grad()
def test_p1_causality(codes):
    model = tiny()
    logits = model(input_ids=codes, class_labels=LABELS, use_cache=False).logits
    changed = codes.clone()
    changed[:, 7:] = (changed[:, 7:] + 3) % 256
    other = model(input_ids=changed, class_labels=LABELS, use_cache=False).logits
    torch.testing.assert_close(other[:, :8], logits[:, :8])  # position j sees codes < j only
    assert not torch.allclose(other[:, 8:], logits[:, 8:])


def test_sampling_is_deterministic_per_generator():
    model = tiny()
    first = model.sample(LABELS, generator=torch.Generator().manual_seed(7))
    second = model.sample(LABELS, generator=torch.Generator().manual_seed(7))
    third = model.sample(LABELS, generator=torch.Generator().manual_seed(8))
    assert first.shape == (3, 16) and first.dtype == torch.int64
    assert torch.equal(first, second) and not torch.equal(first, third)


@torch.no_grad()
@pytest.mark.parametrize("tokens_per_step", [1, 4])
def test_top_k_1_is_greedy_argmax_of_uncached_model(tokens_per_step):
    model = tiny(tokens_per_step=tokens_per_step)
    greedy = torch.zeros(3, 0, dtype=torch.long)
    while greedy.shape[1] < 16:
        logits = model(input_ids=greedy, class_labels=LABELS, use_cache=False).logits
        greedy = torch.cat([greedy, logits[:, greedy.shape[1] : greedy.shape[1] + tokens_per_step].argmax(-1)], 1)
    assert torch.equal(model.sample(LABELS, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)


def test_generate_greedy_equals_sample_greedy_with_and_without_cfg():
    model = tiny()
    start = model.start_token_ids(LABELS)
    generated = model.generate(start, max_new_tokens=16, do_sample=False)
    assert torch.equal(generated[:, 0:1], start)
    assert torch.equal(generated[:, 1:], model.sample(LABELS, top_k=1))
    null_prompt = model.start_token_ids(torch.full((3,), model.config.null_class_id))
    guided = model.generate(start, max_new_tokens=16, do_sample=False, guidance_scale=3.0,
                            negative_prompt_ids=null_prompt)
    assert torch.equal(guided[:, 1:], model.sample(LABELS, top_k=1, guidance_scale=3.0))
    # without negative_prompt_ids our generate() uses the null class as the unconditional prompt
    assert torch.equal(model.generate(start, max_new_tokens=16, do_sample=False, guidance_scale=3.0), guided)


def test_cfg_identity_and_effect():
    model = tiny()
    seed = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    plain = model.sample(LABELS, generator=seed())
    assert torch.equal(model.sample(LABELS, guidance_scale=1.0, generator=seed()), plain)
    assert torch.equal(model.sample(LABELS, guidance_scale=1.0, guidance_schedule="linear", generator=seed()), plain)
    assert not torch.equal(model.sample(LABELS, guidance_scale=4.0, generator=seed()), plain)
    linear = model.sample(LABELS, guidance_scale=4.0, guidance_schedule="linear", top_k=1)
    constant = model.sample(LABELS, guidance_scale=4.0, top_k=1)
    # the linear ramp starts at t = 0: its first token is the unguided one
    assert torch.equal(linear[:, 0], model.sample(LABELS, top_k=1)[:, 0])
    assert not torch.equal(linear, constant)


def test_cfg_stacks_cond_and_uncond_in_one_forward():
    model = tiny()
    calls = []
    handle = model.layers[0].register_forward_hook(lambda module, args, output: calls.append(output.shape[0]))
    model.sample(LABELS, guidance_scale=2.0)
    handle.remove()
    assert calls == [6] * 16  # one pass per token, conditional and null rows together


def test_truncated_sampling_is_prefix_of_full():
    for k, tokens in ((1, 5), (4, 8)):
        model = tiny(tokens_per_step=k)
        full = model.sample(LABELS, generator=torch.Generator().manual_seed(3), guidance_scale=2.0,
                            guidance_schedule="linear")
        short = model.sample(LABELS, num_tokens=tokens, generator=torch.Generator().manual_seed(3),
                             guidance_scale=2.0, guidance_schedule="linear")
        assert short.shape == (3, tokens) and torch.equal(short, full[:, :tokens])


def test_class_dropout_substitutes_null_class():
    model = tiny(class_dropout_prob=0.25).train()
    torch.manual_seed(0)
    batch = 4000
    labels = torch.randint(0, 10, (batch,))
    codes = torch.randint(0, 256, (batch, 16))
    output = model(input_ids=codes, class_labels=labels, labels=codes, use_cache=False)
    null = output.class_labels == model.config.null_class_id
    assert abs(null.float().mean().item() - 0.25) < 0.03
    assert torch.equal(output.class_labels[~null], labels[~null])
    # the dropped rows really were computed with the null class
    model.eval()
    with torch.no_grad():
        rows = null.nonzero().flatten()[:8]
        null_logits = model(input_ids=codes[rows], class_labels=torch.full((8,), 10), use_cache=False).logits
        own_logits = model(input_ids=codes[rows], class_labels=labels[rows], use_cache=False).logits
    torch.testing.assert_close(output.logits[rows].detach(), null_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(null_logits, own_logits)
    # no dropout in eval mode
    assert torch.equal(model(input_ids=codes[:50], class_labels=labels[:50], use_cache=False).class_labels,
                       labels[:50])


def test_loss_is_mean_cross_entropy_over_all_tokens(codes):
    model = tiny()
    output = model(input_ids=codes, class_labels=LABELS, labels=codes, use_cache=False)
    expected = torch.nn.functional.cross_entropy(output.logits.reshape(-1, 256), codes.reshape(-1))
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    assert model.class_embedding.weight.grad[LABELS].abs().sum() > 0


@torch.no_grad()
def test_save_load_identical_logits(codes, tmp_path):
    model = tiny(tokens_per_step=4)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SpectralARForCausalLM) and loaded.config.tokens_per_step == 4
    assert torch.equal(loaded(input_ids=codes, class_labels=LABELS).logits,
                       model(input_ids=codes, class_labels=LABELS).logits)
    assert torch.equal(loaded.sample(LABELS, generator=torch.Generator().manual_seed(1)),
                       model.sample(LABELS, generator=torch.Generator().manual_seed(1)))


def test_bad_inputs_name_the_fix(codes):
    model = tiny()
    with pytest.raises(ValueError, match="class id out of range"):
        model.sample(torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="class id out of range"):
        model(input_ids=codes, class_labels=torch.tensor([1, 2, -1]))
    with pytest.raises(ValueError, match="num_tokens must be a multiple"):
        model.sample(LABELS, num_tokens=17)
    with pytest.raises(ValueError, match="num_tokens must be a multiple of tokens_per_step = 4"):
        tiny(tokens_per_step=4).sample(LABELS, num_tokens=6)
    with pytest.raises(ValueError, match="no null class"):
        tiny(class_dropout_prob=0.0).sample(LABELS, guidance_scale=2.0)
    bad = codes.clone()
    bad[1, 3] = 256
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\)"):
        model(input_ids=bad, class_labels=LABELS)
    bad = codes.clone()
    bad[0, 0] = 300
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\)"):
        model(input_ids=bad, class_labels=LABELS)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 256\)"):
        model(input_ids=codes, class_labels=LABELS, labels=torch.full_like(codes, -1))
    with pytest.raises(ValueError, match="class_labels is required"):
        model(input_ids=codes)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.sample(LABELS, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        model.sample(LABELS, top_p=1.5)
    with pytest.raises(ValueError, match="tokens_per_step 3 does not divide num_image_tokens 16"):
        SpectralARConfig.from_preset("tiny", tokens_per_step=3)
    with pytest.raises(ValueError, match="does not support"):
        model(input_ids=codes, class_labels=LABELS, output_attentions=True)


def test_sampler_matches_the_distribution_and_filters():
    from spectralar_hf.models.generator.modeling_spectralar import _logits_warpers, _sample_from_logits

    probabilities = torch.tensor([0.1, 0.0, 0.5, 0.15, 0.25])
    scores = probabilities.log().expand(40000, -1)
    draws = _sample_from_logits(scores, _logits_warpers(1.0, None, None), torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=5).float() / draws.numel()
    torch.testing.assert_close(frequencies, probabilities, atol=0.01, rtol=0)
    top2 = _sample_from_logits(scores, _logits_warpers(1.0, 2, None), torch.Generator().manual_seed(0))
    assert set(top2.unique().tolist()) == {2, 4}
    assert abs((top2 == 2).float().mean().item() - 0.5 / 0.75) < 0.01
    nucleus = _sample_from_logits(scores, _logits_warpers(1.0, None, 0.6), torch.Generator().manual_seed(0))
    assert set(nucleus.unique().tolist()) == {2, 4}  # the smallest set with mass >= 0.6


@pytest.mark.parametrize("tokens_per_step", [1, 4])
def test_prefix_completion_keeps_prefix_and_continues_greedily(tokens_per_step):
    model = tiny(tokens_per_step=tokens_per_step)
    greedy = model.sample(LABELS, top_k=1)
    completed = model.sample(LABELS, top_k=1, prefix_codes=greedy[:, :8])
    assert torch.equal(completed, greedy)
    other_prefix = (greedy[:, :8] + 1) % 256
    completed = model.sample(LABELS, prefix_codes=other_prefix, generator=torch.Generator().manual_seed(0))
    assert torch.equal(completed[:, :8], other_prefix) and completed.shape == (3, 16)
    assert torch.equal(model.sample(LABELS, prefix_codes=greedy), greedy)
    with pytest.raises(ValueError, match="multiple of tokens_per_step"):
        model.sample(LABELS, prefix_codes=greedy[:, :5] if tokens_per_step == 4 else torch.cat([greedy, greedy], 1))


@torch.no_grad()
def test_fresh_model_has_vars_initialisation():
    """VAR's init reaches every block: transformers skips _init_weights for modules without parameters of their own
    (the blocks), which once left the AdaLN gates at the default N(0, std) instead of std * init_adaln_gamma."""
    torch.manual_seed(0)
    config = SpectralARConfig.from_preset("tiny")
    model = SpectralARForCausalLM(config)
    std, width = config.initializer_range, config.hidden_size
    for block in model.layers:
        gates, modulation = block.ada_lin.weight[: 2 * width], block.ada_lin.weight[2 * width :]
        assert gates.std().item() == pytest.approx(std * config.init_adaln_gamma, rel=0.1)
        assert modulation.std().item() == pytest.approx(std * config.init_adaln, rel=0.1)
        for linear in (block.attn.proj, block.mlp.fc2):
            assert linear.weight.std().item() == pytest.approx(std / (2 * config.num_hidden_layers) ** 0.5, rel=0.1)
        assert block.attn.qkv.weight.std().item() == pytest.approx(std, rel=0.1)
    assert model.lm_head.weight.std().item() == pytest.approx(std * config.init_head, rel=0.1)
