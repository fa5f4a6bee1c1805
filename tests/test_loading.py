"""Loaded weights sit at aligned CPU addresses, so a saved-and-loaded model computes bit for bit what the saved one
did (safetensors hands out 8-byte-aligned tensors, and CPU matmul kernels sum in an order that depends on the
alignment: tests/test_far_text.py's save/load image equality failed by ~3e-8 before)."""

import pytest
import torch
from spectralar_hf import FARPipeline, FARTransformer, SpectralARForCausalLM, SpectralTokenizer
from spectralar_hf.hub import CPU_TENSOR_ALIGNMENT, align_loaded_weights

ROOT = "checkpoints"


def misaligned_parameters(module: torch.nn.Module) -> list[str]:
    return [name for name, tensor in [*module.named_parameters(), *module.named_buffers()]
            if tensor.data_ptr() % CPU_TENSOR_ALIGNMENT]


def test_align_loaded_weights_copies_only_misaligned_tensors():
    layer = torch.nn.Linear(16, 4)
    storage = torch.randn(4 * 16 + 2)
    with torch.no_grad():
        layer.weight.data = storage[2:].view(4, 16)  # 8 bytes past an aligned address, as safetensors gives
    bias_address, values = layer.bias.data_ptr(), layer.weight.detach().clone()
    assert misaligned_parameters(layer) == ["weight"]
    assert align_loaded_weights(layer) is layer
    assert misaligned_parameters(layer) == [] and layer.bias.data_ptr() == bias_address
    assert torch.equal(layer.weight, values) and isinstance(layer.weight, torch.nn.Parameter)


@pytest.mark.parametrize("model_class, folder", [
    (SpectralTokenizer, "spectralar-fashion-mnist/tokenizer"),
    (SpectralARForCausalLM, "spectralar-fashion-mnist/transformer"),
    (FARTransformer, "far-fashion-mnist/transformer"),
])
def test_our_models_load_aligned(model_class, folder):
    assert misaligned_parameters(model_class.from_pretrained(f"{ROOT}/{folder}")) == []


def test_pipelines_align_library_components_too():  # the VAE is loaded by diffusers itself
    pipe = FARPipeline.from_pretrained(f"{ROOT}/far-fashion-mnist")
    assert misaligned_parameters(pipe.vae) == [] and misaligned_parameters(pipe.transformer) == []
