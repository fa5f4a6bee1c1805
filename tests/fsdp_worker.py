"""One rank of the FSDP check (tests/test_fsdp.py):
`torchrun --nproc_per_node 2 tests/fsdp_worker.py {fsdp2,fsdp1} OUT MODEL...` (MODEL: tokenizer, generator, far,
vqgan, vae; fsdp1 needs an accelerator device: torch's FSDP1 refuses CPU-only machines).

The model is wrapped per block with torch's `fully_shard` (FSDP2; each of its `_no_split_modules` a unit, then the
root) on a CPU mesh of the gloo ranks. Each rank trains one step on its half of a batch; the reference is the
unsharded model trained one step on the mean of the same two half-batch losses (same random draws), which is what
FSDP's averaged gradients compute. Rank 0 writes to OUT (a JSON file) the largest differences of the updated weights,
of the EMA weights (FSDP2: diffusers' `EMAModel` over the sharded parameters, gathered by the scaffold's
`full_ema_parameters`) and of the weights saved through the scaffold's path (`full_state_dict` ->
`build_from_config` -> `save_pretrained` -> `from_pretrained`), each against the reference.
"""

import copy
import io
import json
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from spectralar_hf.training.scaffold import (
    GatheredEMAState,
    build_from_config,
    full_ema_parameters,
    full_state_dict,
)

HALF = 2  # samples per rank
LEARNING_RATE = 1.0  # large, so that the step moves the weights well beyond float32 rounding


def build(name: str):
    """(model, loss(model, half_index) for that half's batch and random draws)."""
    torch.manual_seed(0)
    images = torch.rand(2 * HALF, 1, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1])

    def halves(tensor):
        return lambda index: tensor[index * HALF : (index + 1) * HALF]

    image_half, label_half = halves(images), halves(labels)
    if name == "tokenizer":
        from spectralar_hf import SpectralTokenizer, SpectralTokenizerConfig

        model = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1))
        prefixes = halves(torch.tensor([3, 16, 7, 12]))
        return model, lambda m, i: m(image_half(i), num_tokens=prefixes(i)).loss
    if name == "generator":
        from spectralar_hf import SpectralARConfig, SpectralARForCausalLM

        model = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3, class_dropout_prob=0.0))
        codes = halves(torch.randint(0, model.config.vocab_size, (2 * HALF, model.config.num_image_tokens)))
        return model, lambda m, i: m(input_ids=codes(i), class_labels=label_half(i), labels=codes(i),
                                     use_cache=False).loss
    if name == "far":
        from spectralar_hf import FARConfig, FARTransformer

        model = FARTransformer(FARConfig.from_preset("tiny", num_classes=3))
        latents = halves(torch.randn(2 * HALF, model.config.latent_channels, model.config.latent_size,
                                     model.config.latent_size))
        return model, lambda m, i: m(latents(i), class_labels=label_half(i),
                                     generator=torch.Generator().manual_seed(10 + i)).loss
    if name == "vqgan":
        from spectralar_hf import MaskGITVQGAN, MaskGITVQGANConfig

        model = MaskGITVQGAN(MaskGITVQGANConfig(image_size=32, num_channels=1, hidden_channels=8,
                                                channel_mult=[1, 2, 2], num_res_blocks=1, z_channels=8,
                                                codebook_size=16, norm_num_groups=4))
        unit = halves((images + 1) / 2)
        def vqgan_loss(m, i):
            output = m(unit(i))
            return output.reconstruction_loss + output.quantization_loss

        return model, vqgan_loss
    if name == "vae":
        from diffusers import AutoencoderKL

        from spectralar_hf.vae_presets import VAE_PRESETS

        class VAEWithLoss(torch.nn.Module):
            """As examples/train_vae.py trains it: the FSDP root is a wrapper whose forward calls encode / decode
            (methods other than `forward` of a root would run without FSDP's hooks)."""

            def __init__(self):
                super().__init__()
                self.vae = AutoencoderKL(**VAE_PRESETS["tiny"])
                self._no_split_modules = self.vae._no_split_modules

            def forward(self, x, generator):
                posterior = self.vae.encode(x).latent_dist
                latent = posterior.sample(generator=generator)
                return F.mse_loss(self.vae.decode(latent).sample, x) + 1e-6 * posterior.kl().mean()

        return VAEWithLoss(), lambda m, i: m(image_half(i), torch.Generator().manual_seed(20 + i))
    raise ValueError(f"unknown model {name!r}")


def trained(model):
    """The network that is saved (the VAE inside its loss wrapper, as TrainingRun's `ema_module`)."""
    return getattr(model, "vae", model)


def no_split_classes(model) -> tuple[type, ...]:
    names = set(model._no_split_modules or ())
    return tuple({type(module) for module in model.modules() if type(module).__name__ in names})


def shard(model, version: str):
    """Wrap `model` per block (its `_no_split_modules`), then the root: FSDP2's `fully_shard` or FSDP1 with
    `use_orig_params` (what accelerate's FSDP plugin builds for fsdp_version 2 / 1 with the transformer policy)."""
    blocks = no_split_classes(model)
    assert blocks, "no _no_split_modules found"
    if version == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy(set(blocks)), use_orig_params=True)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for module in list(model.modules()):
        if isinstance(module, blocks):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def check(name: str, version: str) -> dict | None:
    """One model's step, EMA and save round trip; the report on rank 0 (None on the others)."""
    rank = dist.get_rank()
    model, loss_of = build(name)
    reference = copy.deepcopy(model)
    model = shard(model, version)

    # Optimizers are built before the forward: between forward and backward FSDP2 registers the root's unsharded
    # parameters, which an optimizer built then would keep (and update instead of the shards).
    # SGD: the update is linear in the gradient (Adam's first step, g / |g|, would blow rounding noise up to lr).
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=LEARNING_RATE)
    sharded_ema = EMAModel(trained(model).parameters(), decay=0.5) if version == "fsdp2" else None
    reference_ema = EMAModel(trained(reference).parameters(), decay=0.5)
    model.train()
    reference.train()
    loss_of(model, rank).backward()
    optimizer.step()
    if sharded_ema is not None:
        sharded_ema.step(trained(model).parameters())
    ((loss_of(reference, 0) + loss_of(reference, 1)) / 2).backward()
    reference_optimizer.step()
    reference_ema.step(trained(reference).parameters())

    if sharded_ema is not None:  # the EMA's checkpoint state: gathered on save, re-sharded on load
        buffer = io.BytesIO()
        torch.save(GatheredEMAState(sharded_ema).state_dict(), buffer)
        buffer.seek(0)
        fresh = EMAModel(trained(model).parameters(), decay=0.5)  # the current weights, not the average
        GatheredEMAState(fresh).load_state_dict(torch.load(buffer, weights_only=True))
        restored = max(float((a.to_local() - b.to_local()).abs().max()) if a.to_local().numel() else 0.0
                       for a, b in zip(fresh.shadow_params, sharded_ema.shadow_params))
        assert fresh.optimization_step == sharded_ema.optimization_step
    state = full_state_dict(trained(model), root=model)  # collective; the scaffold's path
    averaged = full_ema_parameters(sharded_ema) if sharded_ema is not None else None  # collective
    if rank == 0:
        reference, initial = trained(reference), trained(build(name)[0])
        expected = reference.state_dict()
        assert state.keys() == expected.keys(), set(state) ^ set(expected)
        report = {"weights": max(float((state[k] - expected[k]).abs().max()) for k in expected),
                  "moved": max(float((expected[k] - v).abs().max()) for k, v in initial.state_dict().items()),
                  "ema": None if averaged is None else max(float((a - b).abs().max())
                                                           for a, b in zip(averaged, reference_ema.shadow_params))}
        copy_ = build_from_config(type(reference), reference.config)  # what TrainingRun.full_model builds
        copy_.load_state_dict(state)
        with tempfile.TemporaryDirectory() as folder:
            copy_.save_pretrained(folder)
            loaded = type(reference).from_pretrained(folder)
        report["ema_checkpoint"] = restored if sharded_ema is not None else None
        report["saved"] = max(float((loaded.state_dict()[k] - expected[k]).abs().max()) for k in expected)
        return report
    return None


def main(version: str, out: str, *names: str) -> None:
    dist.init_process_group("gloo")
    reports = {name: check(name, version) for name in names}
    if dist.get_rank() == 0:
        with open(out, "w") as stream:
            json.dump(reports, stream)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
