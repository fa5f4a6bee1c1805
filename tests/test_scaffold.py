"""training/scaffold.py: the run scaffolding every training script shares (TrainingRun), on one CPU process; the
sharded paths are in tests/test_fsdp.py."""

import argparse
import os
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
                            text=True, env={**os.environ, "ACCELERATE_USE_DEEPSPEED": "true"})
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
        "vae in train_vae.py's loss wrapper": (train_vae_module().VAEWithLoss(AutoencoderKL(**VAE_PRESETS["tiny"])),
                                                "ResnetBlock2D"),
    }


def train_vae_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_vae", ROOT / "examples" / "train_vae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["tokenizer", "generator", "far", "vqgan", "vae",
                                  "vae in train_vae.py's loss wrapper"])
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
    for name, (model, _) in models().items():
        if "wrapper" in name:
            continue
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


# --- issue 28's flags, applied once in the scaffold for every script --------------------------------------------


@pytest.mark.parametrize("name", ["tokenizer", "generator", "far", "vqgan", "vae"])
def test_gradient_checkpointing_recomputes_blocks_with_identical_loss_and_gradients(name):
    import copy

    sys.path.insert(0, str(Path(__file__).parent))
    import fsdp_worker

    model, loss_of = fsdp_worker.build(name)
    reference = copy.deepcopy(model)
    scaffold.enable_gradient_checkpointing(fsdp_worker.trained(model))
    block = next(m for m in model.modules() if type(m) in fsdp_worker.no_split_classes(model))
    # a layer inside the block: its hooks run inside the checkpointed forward, so again when it is recomputed
    inner = next(m for m in block.modules() if m is not block and list(m.parameters(recurse=False)))
    calls = []
    inner.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    reference.train()
    loss, expected = loss_of(model, 0), loss_of(reference, 0)
    assert len(calls) == 1
    loss.backward()
    expected.backward()
    assert len(calls) == 2  # the block ran again in the backward pass
    assert float(loss) == float(expected)
    for (key, parameter), other in zip(model.named_parameters(), reference.parameters()):
        assert (parameter.grad is None) == (other.grad is None), key
        if parameter.grad is not None:
            torch.testing.assert_close(parameter.grad, other.grad, rtol=0, atol=0, msg=key)


def test_a_model_without_checkpointing_support_is_a_clear_error():
    with pytest.raises(ValueError, match="--gradient_checkpointing: Linear does not support"):
        scaffold.enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_report_to_names_a_missing_or_unknown_tracker(tmp_path, monkeypatch):
    from accelerate.utils import imports

    monkeypatch.setattr(imports, "is_wandb_available", lambda: False)
    with pytest.raises(ValueError, match="--report_to wandb: not installed, so the run would not be logged; pip "
                                         "install wandb, or pass --report_to none"):
        TrainingRun(run_args(tmp_path, "--report_to", "wandb"), "test", outputs=())
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="--report_to tensorbord: unknown tracker"):
        scaffold.check_trackers("tensorboard,tensorbord")
    assert scaffold.check_trackers("none") is None
    assert scaffold.check_trackers("tensorboard") == ["tensorboard"]


def test_allow_tf32_sets_the_cuda_flags_and_says_it_does_nothing_on_a_cpu(tmp_path, caplog):
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    try:
        with caplog.at_level("WARNING"):
            TrainingRun(run_args(tmp_path, "--allow_tf32"), "test", outputs=())
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = before
    assert "--allow_tf32 has no effect on a CPU" in caplog.text


def test_validation_images_go_to_every_tracker_that_takes_images(tmp_path):
    from PIL import Image

    logged = []

    class Tracker:
        name = "wandb"

        def log_images(self, values, step):
            logged.append((values, step))

    class Accelerator:
        trackers = [Tracker()]

    image = Image.new("RGB", (4, 4))
    path = scaffold.save_image(Accelerator(), image, tmp_path, "samples", 12)
    assert path == tmp_path / "samples" / "samples-0000012.png" and path.exists()
    assert logged == [({"samples": [image]}, 12)]
