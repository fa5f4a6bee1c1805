"""training/scaffold.py: the run scaffolding every training script shares (TrainingRun), on one CPU process; the
sharded paths are in tests/test_fsdp.py."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

from spectralar_hf import (
    FARConfig,
    FARTransformer,
    MaskGITVQGAN,
    MaskGITVQGANConfig,
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf.training import scaffold
from spectralar_hf.training.arguments import OptimizationDefaults, add_optimization_arguments, add_run_arguments
from spectralar_hf.training.scaffold import DEEPSPEED_REFUSAL, TrainingRun, build_from_config

ROOT = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_optimization_arguments(parser, OptimizationDefaults())
    add_run_arguments(parser, "validate every N")
    return parser.parse_args(["--output_dir", str(tmp_path / "run"), "--report_to", "none", *extra])


def test_deepspeed_is_refused_in_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed is not supported .* launch with FSDP instead"):
        TrainingRun(run_args(tmp_path), "test", outputs=())
    assert not (tmp_path / "run").exists()
    (tmp_path / "codes").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "train_generator.py"), "--tokenized_dataset",
                             str(tmp_path / "codes"), "--output_dir", str(tmp_path / "g")], capture_output=True,
                            text=True, env={**dict(__import__("os").environ), "ACCELERATE_USE_DEEPSPEED": "true"})
    assert result.returncode == 2
    assert result.stderr.strip() == f"train_generator.py: error: {DEEPSPEED_REFUSAL}"


def test_full_model_swaps_the_ema_weights_in_and_back(tmp_path):
    run = TrainingRun(run_args(tmp_path, "--use_ema", "--ema_decay", "0.5"), "test", outputs=())
    model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3))
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    optimizer, scheduler = run.optimizer_and_scheduler(model)
    model, optimizer, loader, scheduler = run.prepare(model, optimizer, loader, scheduler, config_record={},
                                                      model_cls=SpectralARForCausalLM)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # the EMA (the initial weights) now differs from the weights
    trained = [p.detach().clone() for p in model.parameters()]
    model.train()
    with run.full_model(model) as full:
        assert full is model and not full.training
        for parameter, shadow in zip(full.parameters(), run.ema.shadow_params):
            assert torch.equal(parameter, shadow)
    assert model.training and all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))
    with run.full_model(model, final=True) as final:  # the final save keeps the EMA weights
        pass
    assert all(torch.equal(p, s) for p, s in zip(final.parameters(), run.ema.shadow_params))


def test_use_ema_under_fsdp1_is_refused(tmp_path, monkeypatch):
    run = TrainingRun(run_args(tmp_path, "--use_ema"), "test", outputs=())
    monkeypatch.setattr(scaffold, "is_sharded", lambda accelerator: True)
    monkeypatch.setattr(scaffold, "fsdp_version", lambda accelerator: 1)
    model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3))
    optimizer, scheduler = run.optimizer_and_scheduler(model)
    with pytest.raises(ValueError, match="--use_ema under FSDP1 is not supported.*fsdp_version: 2"):
        run.prepare(model, optimizer, torch.utils.data.DataLoader([0, 1]), scheduler, config_record={},
                    model_cls=SpectralARForCausalLM)


def models():
    from diffusers import AutoencoderKL

    from spectralar_hf.vae_presets import VAE_PRESETS

    return {
        "tokenizer": (SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")), "SpectralTokenizerBlock"),
        "generator": (SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3)), "SpectralARBlock"),
        "far": (FARTransformer(FARConfig.from_preset("tiny", num_classes=3)), "FARBlock"),
        "vqgan": (MaskGITVQGAN(MaskGITVQGANConfig(image_size=32, num_channels=1, hidden_channels=8,
                                                  channel_mult=[1, 2, 2], num_res_blocks=1, z_channels=8,
                                                  codebook_size=16, norm_num_groups=4)), "VQGANResnetBlock"),
        "vae": (AutoencoderKL(**VAE_PRESETS["tiny"]), "ResnetBlock2D"),
    }


@pytest.mark.parametrize("name", ["tokenizer", "generator", "far", "vqgan", "vae"])
def test_accelerates_fsdp2_policy_wraps_every_model_per_block(name):
    """examples/accelerate_fsdp.yaml's policy (TRANSFORMER_BASED_WRAP from `_no_split_modules`) finds each model's
    blocks, and every parameter outside them belongs to the root."""
    model, block = models()[name]
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [module for module in model.modules() if policy(module)]
    assert wrapped and {type(module).__name__ for module in wrapped} <= {block, "BasicTransformerBlock"}
    assert block in {type(module).__name__ for module in wrapped}


def test_build_from_config_rebuilds_transformers_and_diffusers_models():
    for model, _ in models().values():
        copy = build_from_config(type(model), model.config)
        assert type(copy) is type(model)
        assert copy.state_dict().keys() == model.state_dict().keys()


def test_the_readmes_fsdp_memory_figures_are_the_presets_sizes():
    """README "Sharded training": parameters of the presets and DDP's ~20 bytes per parameter (float32 weights,
    gradients, two AdamW moments, the EMA)."""
    readme = (ROOT / "README.md").read_text()
    with torch.device("meta"):
        sizes = {"SpectralAR-d16": SpectralARForCausalLM(SpectralARConfig.from_preset("d16")),
                 "d20": SpectralARForCausalLM(SpectralARConfig.from_preset("d20")),
                 "d24": SpectralARForCausalLM(SpectralARConfig.from_preset("d24")),
                 "FAR-H": FARTransformer(FARConfig.from_preset("far-h")),
                 "TiTok-B64": SpectralTokenizer(SpectralTokenizerConfig.from_preset("titok-b64"))}
    for name, model in sizes.items():
        count = sum(p.numel() for p in model.parameters())
        stated = f"{count / 1e6:.0f}M" if count < 1e9 else f"{count / 1e9:.2f}B"
        gigabytes = 20 * count / 1e9
        memory = f"{gigabytes:.1f} GB" if gigabytes < 10 else f"{gigabytes:.0f} GB"
        assert f"{name} ({stated}" in readme and f"{stated}{' parameters' if name.endswith('16') else ''}) {memory}" \
            in readme, (name, stated, memory)
