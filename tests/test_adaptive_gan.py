"""VQGAN's adaptive GAN weight (`training.losses.adaptive_adversarial_weight`) and its `--adaptive_gan_weight` flag in
the tokenizer and VAE training scripts."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from torch import nn

from spectralar_hf.training.losses import adaptive_adversarial_weight

ROOT = Path(__file__).parents[1]


def toy_decoder_losses():
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5))
    latents, target = torch.randn(4, 6), torch.randn(4, 5)
    output = decoder(latents)
    reconstruction = (output - target).pow(2).mean()
    adversarial = -(output * torch.linspace(-1, 2, 5)).mean()  # a stand-in for -mean(D(output))
    return decoder, reconstruction, adversarial


def test_weight_is_the_ratio_of_last_layer_gradient_norms():
    decoder, reconstruction, adversarial = toy_decoder_losses()
    last = decoder[2].weight
    weight = adaptive_adversarial_weight(reconstruction, adversarial, last)
    reconstruction_grad = torch.autograd.grad(reconstruction, last, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial, last, retain_graph=True)[0]
    expected = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad  # detached: it scales the GAN term, it is not trained
    assert all(p.grad is None for p in decoder.parameters())  # nothing accumulated into .grad
    (reconstruction + weight * adversarial).backward()  # the graphs are still usable afterwards


def test_weight_is_clamped_and_scale_invariant():
    decoder, reconstruction, adversarial = toy_decoder_losses()
    last = decoder[2].weight
    base = adaptive_adversarial_weight(reconstruction, adversarial, last)
    # scaling the adversarial loss by 10 divides the weight by ~10: the weighted GAN gradient keeps its size
    scaled = adaptive_adversarial_weight(reconstruction, 10 * adversarial, last)
    torch.testing.assert_close(scaled * 10, base, rtol=1e-3, atol=0)
    # an adversarial loss with no gradient at the last layer would give rec / eps: clamped to max_weight
    flat = adaptive_adversarial_weight(reconstruction, 0.0 * adversarial, last, max_weight=7.0)
    assert flat.item() == 7.0


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, np.stack(blob_images(16, seed=5)), np.arange(16) % 10)
    return root


def load_main(script: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_in_process(script: str, args: list) -> None:
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        load_main(str(ROOT / "examples" / script))([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


SCRIPTS = {
    "train_tokenizer.py": ["--preset", "tiny-32", "--config_overrides", '{"num_channels": 1, "codebook_size": 64}'],
    "train_vae.py": ["--preset", "tiny", "--scaling_samples", "8"],
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_log_a_positive_adaptive_weight(script, idx_folder, tmp_path):
    run_in_process(script, ["--idx_data_dir", idx_folder, *SCRIPTS[script], "--output_dir", tmp_path,
                            "--train_batch_size", 8, "--max_train_steps", 3, "--report_to", "none",
                            "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
                            "--gan_weight", 0.5, "--adaptive_gan_weight", "--discriminator_start", 1,
                            "--discriminator_channels", 8, "--discriminator_stages", 2])
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert "adaptive_gan_weight" not in records[0]  # step 1: the discriminator has not started
    weights = [record["adaptive_gan_weight"] for record in records[1:]]
    assert len(weights) == 2 and all(np.isfinite(w) and w > 0 for w in weights)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_adaptive_weight_without_gan_is_an_error(script, idx_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        load_main(str(ROOT / "examples" / script))(["--idx_data_dir", str(idx_folder), *SCRIPTS[script],
                                                     "--output_dir", str(tmp_path), "--adaptive_gan_weight"])
    assert error.value.code == 2 and "needs --gan_weight > 0" in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_clamp_the_adaptive_weight_at_the_given_max(script, idx_folder, tmp_path):
    common = ["--idx_data_dir", idx_folder, *SCRIPTS[script], "--train_batch_size", 8, "--max_train_steps", 3,
              "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
              "--gan_weight", 0.5, "--adaptive_gan_weight", "--discriminator_start", 1, "--discriminator_channels", 8,
              "--discriminator_stages", 2]

    def logged_weights(output_dir, *extra):
        run_in_process(script, [*common, "--output_dir", output_dir, *extra])
        records = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
        return [record["adaptive_gan_weight"] for record in records[1:]]

    free = logged_weights(tmp_path / "free")
    bound = min(free) / 0.5 / 4  # a quarter of the smallest factor the unclamped run saw: every step is clamped
    clamped = logged_weights(tmp_path / "clamped", "--adaptive_gan_weight_max", bound)
    assert len(clamped) == 2 and np.allclose(clamped, 0.5 * bound, rtol=1e-6)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_non_positive_adaptive_weight_max_is_an_error(script, idx_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        load_main(str(ROOT / "examples" / script))(["--idx_data_dir", str(idx_folder), *SCRIPTS[script],
                                                     "--output_dir", str(tmp_path), "--gan_weight", "0.5",
                                                     "--adaptive_gan_weight", "--adaptive_gan_weight_max", "0"])
    assert error.value.code == 2 and "--adaptive_gan_weight_max must be > 0, got 0.0" in capsys.readouterr().err
