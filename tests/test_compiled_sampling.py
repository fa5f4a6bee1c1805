"""Compiled sampling (`sample(compile_config=...)`): same codes as eager for a fixed seed, one graph for every step,
the generation-config switch, the pipeline argument, and clear errors."""

import shutil

import pytest
import torch
from transformers import CompileConfig

from spectralar_hf import (
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)

LABELS = torch.tensor([1, 5, 9])
# Graph capture only (fast, no C++ compiler needed): a graph break or a Python side effect in the per-step
# forward fails here with fullgraph=True.
AOT_EAGER = CompileConfig(backend="aot_eager", fullgraph=True, dynamic=False, mode=None)
HAS_CPP_COMPILER = any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Dynamo keeps at most `recompile_limit` graphs per code object across all models and shapes of a process."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny(**overrides) -> SpectralARForCausalLM:
    """A tiny model with weights spread out, so that sampled codes depend visibly on every part of the forward."""
    torch.manual_seed(0)
    model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", **overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("log_scale"):
                parameter.normal_(0.0, 0.15)
    return model


class CountingBackend:
    """A `torch.compile` backend that counts the graphs it is given and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def sample_both(model, compile_config, **settings):
    eager = model.sample(LABELS, generator=torch.Generator().manual_seed(3), **settings)
    compiled = model.sample(LABELS, generator=torch.Generator().manual_seed(3), compile_config=compile_config,
                            **settings)
    return eager, compiled


@pytest.mark.parametrize("tokens_per_step", [1, 4])
@pytest.mark.parametrize("settings", [
    dict(),
    dict(guidance_scale=2.5, guidance_schedule="linear", top_k=50, top_p=0.9, temperature=1.3),
], ids=["plain", "cfg-filters"])
def test_compiled_graph_samples_the_same_codes_as_eager(tokens_per_step, settings):
    model = tiny(tokens_per_step=tokens_per_step)
    eager, compiled = sample_both(model, AOT_EAGER, **settings)
    assert torch.equal(compiled, eager)
    other_seed = model.sample(LABELS, generator=torch.Generator().manual_seed(4), compile_config=AOT_EAGER,
                              **settings)
    assert not torch.equal(other_seed, eager)  # the comparison is not vacuous


def test_compiled_sampling_with_a_prefix_and_truncation_equals_eager():
    """A prefix prefill (longer than one step) runs eagerly, the steps after it compiled; `num_tokens` stops early."""
    model = tiny(tokens_per_step=4)
    prefix = torch.randint(0, 256, (3, 8), generator=torch.Generator().manual_seed(0))
    eager, compiled = sample_both(model, AOT_EAGER, prefix_codes=prefix, num_tokens=12, guidance_scale=2.0)
    assert compiled.shape == (3, 12) and torch.equal(compiled[:, :8], prefix)
    assert torch.equal(compiled, eager)


def test_top_k_1_compiled_is_the_greedy_argmax_of_the_uncached_model():
    model = tiny()
    greedy = torch.zeros(3, 0, dtype=torch.long)
    with torch.no_grad():
        while greedy.shape[1] < 16:
            logits = model(input_ids=greedy, class_labels=LABELS, use_cache=False).logits
            greedy = torch.cat([greedy, logits[:, greedy.shape[1]].argmax(-1, keepdim=True)], 1)
    assert torch.equal(model.sample(LABELS, top_k=1, compile_config=AOT_EAGER), greedy)


def test_one_graph_serves_every_step_and_later_calls():
    model = tiny()
    backend = CountingBackend()
    config = CompileConfig(backend=backend, fullgraph=True, dynamic=False, mode=None)
    first = model.sample(LABELS, generator=torch.Generator().manual_seed(0), compile_config=config)
    assert backend.graphs == 1  # 16 steps, one graph: shapes do not depend on the step
    again = model.sample(LABELS, generator=torch.Generator().manual_seed(0), compile_config=config)
    assert backend.graphs == 1 and torch.equal(first, again)  # the kept cache buffers: no recompilation
    model.sample(torch.tensor([2]), compile_config=config)
    assert backend.graphs == 2  # a new batch size is a new shape


def test_generation_config_switches_compilation_and_the_argument_overrides_it():
    model = tiny()
    backend = CountingBackend()
    model.generation_config.compile_config = CompileConfig(backend=backend, fullgraph=True, dynamic=False,
                                                           mode=None)
    eager = model.sample(LABELS, generator=torch.Generator().manual_seed(0), compile_config=False)
    assert backend.graphs == 0
    compiled = model.sample(LABELS, generator=torch.Generator().manual_seed(0))
    assert backend.graphs == 1 and torch.equal(compiled, eager)


def test_pipeline_passes_compile_config_to_the_generator(tmp_path):
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).eval()
    generator_config = SpectralARConfig.from_preset("tiny", vocab_size=tokenizer.config.codebook_size,
                                                    num_image_tokens=tokenizer.config.num_latent_tokens)
    pipe = SpectralARPipeline(tokenizer=tokenizer, transformer=SpectralARForCausalLM(generator_config).eval())
    pipe.set_progress_bar_config(disable=True)
    backend = CountingBackend()
    config = CompileConfig(backend=backend, fullgraph=True, dynamic=False, mode=None)
    eager = pipe([0, 3], generator=torch.Generator().manual_seed(1), output_type="pt")
    compiled = pipe([0, 3], generator=torch.Generator().manual_seed(1), output_type="pt", compile_config=config)
    assert backend.graphs == 1
    assert torch.equal(compiled.codes, eager.codes) and torch.equal(compiled.images, eager.images)


@pytest.mark.skipif(not HAS_CPP_COMPILER, reason="inductor on CPU needs a C++ compiler (g++ / clang++)")
def test_inductor_compiled_sampling_equals_eager_with_cfg():
    """The default `compile_config=True` (inductor): the same codes as eager, with guidance and nucleus filtering."""
    model = tiny(tokens_per_step=4)
    eager, compiled = sample_both(model, True, guidance_scale=2.0, top_p=0.95)
    assert torch.equal(compiled, eager)


def test_hitting_the_recompile_limit_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    model = tiny()
    model.sample(LABELS, compile_config=AOT_EAGER)
    with pytest.raises(RuntimeError, match="raise that limit, call torch._dynamo.reset"):
        model.sample(torch.tensor([2]), compile_config=AOT_EAGER)  # a second batch size needs a second graph


@pytest.mark.parametrize("value, error, message", [
    ("yes", TypeError, "compile_config must be True, False, None or a transformers.CompileConfig"),
    (CompileConfig(mode="default", options={"max_autotune": True}), ValueError, "set mode=None"),
])
def test_bad_compile_config_is_a_clear_error(value, error, message):
    with pytest.raises(error, match=message):
        tiny().sample(LABELS, compile_config=value)
