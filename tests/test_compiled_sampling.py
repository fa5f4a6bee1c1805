"""Compiled sampling (`sample(compile_config=...)`): same codes as eager for a fixed seed, one graph for every step,
the generation-config switch, the pipeline argument, and clear errors."""

import shutil

import pytest
import torch
from transformers import CompileConfig

from test_generator import LABELS, tiny
from test_pipeline import make_pipeline

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


def test_pipeline_passes_compile_config_to_the_generator():
    pipe = make_pipeline()
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


def test_hitting_the_recompile_limit_is_a_clear_error():
    model = tiny()
    with torch._dynamo.config.patch(recompile_limit=1):
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


def teacher_forced_logits(model, codes, compile_config) -> torch.Tensor:
    """`(3, 16, V)` logits of the sampling forward fed `codes` step by step (eager, or compiled per `compile_config`)."""
    step_size = model.config.tokens_per_step
    compiled = model._compiled_forward(compile_config)
    modulations, head_modulation = model._condition(LABELS)
    embeddings = model._start_embeddings(LABELS)
    cache = model._sampling_cache(3, 16, model._activation_dtype(model.dtype), reuse=compiled is not None)
    positions = torch.arange(step_size)
    logits = []
    for start in range(0, 16, step_size):
        logits.append(model._sampling_step(embeddings, positions, modulations, head_modulation, cache, compiled))
        embeddings, positions = model.token_embedding(codes[:, start : start + step_size]), positions + step_size
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("precision", ["autocast-bf16", "bf16-weights"])
def test_sampling_in_bfloat16_keeps_a_bf16_cache_and_compiles_to_the_same_logits(precision):
    """Under `accelerate --mixed_precision bf16` (autocast) the keys are bf16 while the embeddings stay float32:
    the cache takes the keys' dtype. With bf16 weights everything is bf16. Compiled and eager steps agree to bf16
    rounding (the compiled graph attends over the whole masked buffer, eager over the written prefix, so sampled
    codes may differ where two logits are within rounding of each other)."""
    model = tiny(tokens_per_step=4)
    if precision == "bf16-weights":
        model = model.to(torch.bfloat16)
    codes = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast-bf16"):
        assert model._activation_dtype(model.dtype) == torch.bfloat16
        eager = teacher_forced_logits(model, codes, False)
        compiled = teacher_forced_logits(model, codes, AOT_EAGER)
        samples = model.sample(LABELS, guidance_scale=2.0, top_k=20, compile_config=AOT_EAGER)
    with torch.no_grad():
        reference = model.float()(input_ids=codes, class_labels=LABELS, use_cache=False).logits
    scale = reference.abs().max()
    assert (compiled - eager).abs().max() < 0.02 * scale
    assert 0.002 * scale < (eager - reference).abs().max() < 0.1 * scale  # really bf16, and still the same model
    assert samples.shape == (3, 16) and 0 <= int(samples.min()) and int(samples.max()) < 256
