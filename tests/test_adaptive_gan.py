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


def test_weight_matches_vqgan_on_a_hand_computed_case():
    """VQGAN: `||grad_W L_rec|| / (||grad_W L_G|| + 1e-4)`, clamped to `[0, max]`, on a last layer of two weights whose
    gradients are known in closed form: W = (1, 2), L_rec = 1.5 w1^2 + 4 w2 has gradient (3 w1, 4) = (3, 4), norm 5;
    L_G = -(1.2 w1 + 1.6 w2) has gradient (-1.2, -1.6), norm 2."""
    last = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def losses(adversarial_scale=1.0):
        return 1.5 * last[0] ** 2 + 4.0 * last[1], -adversarial_scale * (1.2 * last[0] + 1.6 * last[1])

    weight = adaptive_adversarial_weight(*losses(), last)
    assert weight.dtype == torch.float64 and weight.dim() == 0
    assert weight.item() == pytest.approx(5.0 / 2.0001, rel=1e-12)  # 2.499875...
    assert 0.5 * weight.item() == pytest.approx(1.24993750312, rel=1e-10)  # times a GAN weight of 0.5
    # eps shows when the GAN gradient is small: |grad L_G| = 2e-3 gives 5 / 2.1e-3 (not 5 / 2e-3 = 2500)
    assert adaptive_adversarial_weight(*losses(1e-3), last).item() == pytest.approx(5.0 / 2.1e-3, rel=1e-9)
    # clamped to [0, max]: 2.4999 -> 2 with max 2; no GAN gradient gives 5 / 1e-4 = 5e4 -> the default max 1e4
    assert adaptive_adversarial_weight(*losses(), last, max_weight=2.0).item() == 2.0
    assert adaptive_adversarial_weight(*losses(0.0), last).item() == 1e4
    # the ratio of the norms of the whole gradients: L_rec's gradient (3 w1, 4) at W = (-2, 0) is (-6, 4)
    with torch.no_grad():
        last.copy_(torch.tensor([-2.0, 0.0], dtype=torch.float64))
    assert adaptive_adversarial_weight(*losses(), last).item() == pytest.approx(52 ** 0.5 / 2.0001, rel=1e-12)
    assert last.grad is None


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


# The layer that writes the pixels, identified by its output size (no other decoder layer has it): the tokenizer's
# head (4 x 4 patch x 1 channel = 16 out_features; hidden size 64) or the VAE's conv_out (1 out_channel).
OUTPUT_LAYER = {
    "train_tokenizer.py": (16, ["--config_overrides", '{"num_channels": 1, "codebook_size": 64, "patch_size": 4}']),
    "train_vae.py": (1, []),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_log_the_gan_weight_times_the_adaptive_factor(script, idx_folder, tmp_path, monkeypatch):
    """The logged weight is --gan_weight times VQGAN's factor computed on the decoder's output layer with the
    default max, and the factor is the gradient-norm ratio of the losses the script passes."""
    from spectralar_hf.training import losses

    calls = []
    original = losses.adaptive_adversarial_weight

    def recording(reconstruction_loss, adversarial_loss, last_layer_weight, **kwargs):
        factor = original(reconstruction_loss, adversarial_loss, last_layer_weight, **kwargs)
        rec_grad, = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)
        adv_grad, = torch.autograd.grad(adversarial_loss, last_layer_weight, retain_graph=True)
        calls.append(dict(factor=factor.item(), rec=rec_grad.norm().item(), adv=adv_grad.norm().item(),
                          shape=tuple(last_layer_weight.shape), leaf=last_layer_weight.is_leaf, **kwargs))
        return factor

    monkeypatch.setattr(losses, "adaptive_adversarial_weight", recording)  # the scripts import it from here
    rows, overrides = OUTPUT_LAYER[script]
    run_in_process(script, ["--idx_data_dir", idx_folder, *SCRIPTS[script], *overrides, "--output_dir", tmp_path,
                            "--train_batch_size", 8, "--max_train_steps", 3, "--report_to", "none",
                            "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
                            "--gan_weight", 0.5, "--adaptive_gan_weight", "--discriminator_start", 1,
                            "--discriminator_channels", 8, "--discriminator_stages", 2])
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert "adaptive_gan_weight" not in records[0]  # step 1: the discriminator has not started
    weights = [record["adaptive_gan_weight"] for record in records[1:]]
    assert len(weights) == 2 == len(calls) and all(np.isfinite(w) and w > 0 for w in weights)
    for logged, call in zip(weights, calls):
        assert call["leaf"] and call["shape"][0] == rows, call
        assert call.get("max_weight", 1e4) == 1e4
        assert call["rec"] > 0 and call["adv"] > 0
        assert call["factor"] == pytest.approx(min(call["rec"] / (call["adv"] + 1e-4), 1e4), rel=1e-5)
        assert logged == pytest.approx(0.5 * call["factor"], rel=1e-6)


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
