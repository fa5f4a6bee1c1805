"""The generator-side metrics of the Table 4 issue: held-out NLL and its unigram baseline, the generation gap, and
the tokenizer's full-length loss term (ours), each against a direct computation."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import blob_images, write_idx_dataset
from test_evaluate_cli import StandIn, run

from spectralar_hf import (
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
)
from spectralar_hf.evaluation import code_negative_log_likelihood, unigram_cross_entropy
from spectralar_hf.evaluation.fid import extract_features, feature_statistics, frechet_distance
from spectralar_hf.evaluation.report import evaluate_pipeline, evaluate_tokenizer, generate_images, reconstruct_images


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1))
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3))
    pipeline = SpectralARPipeline(tokenizer=tokenizer, transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    return StandIn().eval()


def test_nll_is_the_models_own_cross_entropy_per_token_and_position(pipe):
    model = pipe.transformer
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, model.config.vocab_size, (7, model.config.num_image_tokens), generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    model.train()  # as during training: the function scores in eval mode (no class dropout) and restores the mode
    result = code_negative_log_likelihood(model, codes, labels, batch_size=3)  # batches of 3, 3 and 1
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=codes, class_labels=labels, use_cache=False).logits
        per_token = F.cross_entropy(logits.transpose(1, 2), codes, reduction="none")
        loss = model(input_ids=codes, class_labels=labels, labels=codes).loss
    assert result["num_sequences"] == 7
    assert result["nll"] == pytest.approx(float(loss), rel=1e-5)
    np.testing.assert_allclose(result["nll_per_position"], per_token.mean(0).numpy(), rtol=1e-5)


def test_nll_depends_on_the_class_labels(pipe):
    model = pipe.transformer
    torch.nn.init.normal_(model.class_embedding.weight, std=1.0)  # a fresh model barely uses its class
    codes = torch.randint(0, model.config.vocab_size, (4, model.config.num_image_tokens))
    a = code_negative_log_likelihood(model, codes, torch.zeros(4, dtype=torch.long))["nll"]
    b = code_negative_log_likelihood(model, codes, torch.full((4,), 2))["nll"]
    assert a != b


def test_nll_refuses_codes_that_do_not_fit_the_generator(pipe):
    model = pipe.transformer
    n, vocab = model.config.num_image_tokens, model.config.vocab_size
    with pytest.raises(ValueError, match="tokens per image but the generator models"):
        code_negative_log_likelihood(model, torch.zeros(2, n - 1, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ValueError, match="were they made by another tokenizer"):
        code_negative_log_likelihood(model, torch.full((2, n), vocab), torch.zeros(2))
    with pytest.raises(ValueError, match="3 class labels for 2 code sequences"):
        code_negative_log_likelihood(model, torch.zeros(2, n, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="integer tensor"):
        code_negative_log_likelihood(model, torch.zeros(2, n), torch.zeros(2))


def test_unigram_cross_entropy_is_laplace_smoothed_counts():
    reference = torch.tensor([[0, 0, 1], [2, 0, 1]])
    codes = torch.tensor([[0, 3], [1, 1]])
    counts = np.array([3, 2, 1, 0]) + 0.5
    probabilities = counts / counts.sum()
    expected = -np.mean(np.log(probabilities[[0, 3, 1, 1]]))
    assert unigram_cross_entropy(reference, codes, vocab_size=4, smoothing=0.5) == pytest.approx(expected)
    # a uniform reference over the whole vocabulary costs log(V) per token
    assert unigram_cross_entropy(torch.arange(8).view(2, 4), codes, 8) == pytest.approx(math.log(8))
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        unigram_cross_entropy(reference, codes, 4, smoothing=0)
    with pytest.raises(ValueError, match="vocabulary has 3 entries"):
        unigram_cross_entropy(reference, codes, 3)


def test_generation_gap_is_the_fid_of_samples_against_reconstructions(pipe, extractor):
    images = torch.stack([torch.from_numpy(x).float() / 127.5 - 1 for x in blob_images(12, seed=4, size=32)])
    images = images.unsqueeze(1)
    report = evaluate_pipeline(pipe, images, samples_per_class=2, extractor=extractor, seed=3, generation_gap=True)
    samples = generate_images(pipe, [c for c in range(3) for _ in range(2)], seed=3)
    reconstructions = reconstruct_images(pipe.tokenizer, images)
    sample_stats, reconstruction_stats, image_stats = (
        feature_statistics(extract_features(x, extractor, progress=False)) for x in (samples, reconstructions, images))
    assert report["generation_gap_fid"] == pytest.approx(frechet_distance(*sample_stats, *reconstruction_stats),
                                                         rel=1e-6)
    assert report["reconstruction_fid"] == pytest.approx(frechet_distance(*reconstruction_stats, *image_stats),
                                                         rel=1e-6)
    # the tokenizer report's rFID is the same number
    assert evaluate_tokenizer(pipe.tokenizer, images, prefixes=[4], extractor=extractor)["rfid"] == pytest.approx(
        report["reconstruction_fid"], rel=1e-6)
    assert "generation_gap_fid" not in evaluate_pipeline(pipe, images, samples_per_class=2, extractor=extractor)


def test_generation_gap_cli_flag(tmp_path, capsys, pipe, extractor):
    torch.jit.script(extractor).save(str(tmp_path / "standin.pt"))
    (tmp_path / "idx").mkdir()
    write_idx_dataset(tmp_path / "idx", np.stack(blob_images(30, seed=1)), np.arange(30) % 3)
    pipe.save_pretrained(tmp_path / "pipeline")
    pipe.tokenizer.save_pretrained(tmp_path / "tokenizer")
    common = ["--idx-data-dir", tmp_path / "idx", "--num-images", 9, "--inception", tmp_path / "standin.pt"]
    status, out = run(capsys, "evaluate", "pipeline", tmp_path / "pipeline", *common, "--samples-per-class", 2,
                      "--generation-gap", "--report", tmp_path / "r.json")
    assert status == 0, out.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["generation_gap_fid"] >= 0 and report["reconstruction_fid"] >= 0
    assert "generation_gap_fid" in json.loads(out.out[: out.out.index("}") + 1])  # in the printed summary
    status, out = run(capsys, "evaluate", "tokenizer", tmp_path / "tokenizer", *common[:4], "--generation-gap",
                      "--report", tmp_path / "t.json")
    assert status == 2 and "--generation-gap" in out.err and len(out.err.strip().splitlines()) == 1


def test_generation_gap_needs_a_tokenizer():
    class FARLike:
        transformer = type("T", (), {"config": type("C", (), {"num_classes": 2})()})()

    with pytest.raises(ValueError, match="applies to SpectralAR pipelines"):
        evaluate_pipeline(FARLike(), torch.zeros(8, 1, 8, 8), samples_per_class=2, generation_gap=True)


# --- full_length_loss_weight (ours): a full N-token term at every step ---------------------------------------------


def test_full_length_term_is_the_full_reconstruction_mse_weighted():
    torch.manual_seed(0)
    config = SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1, full_length_loss_weight=0.5)
    model = SpectralTokenizer(config).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    output = model(x, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.decode(output.codes).reconstruction
        prefix = model.decode(output.codes, output.num_tokens).reconstruction
    torch.testing.assert_close(output.full_length_loss, F.mse_loss(full, x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.reconstruction, prefix, rtol=1e-5, atol=1e-5)  # the nested term unchanged
    vq = output.codebook_loss + config.commitment_cost * output.commitment_loss
    torch.testing.assert_close(output.loss, output.reconstruction_loss + 0.5 * output.full_length_loss + vq)
    # weight 0 (the default) is Algorithm 1 alone: same draws, same prefix term, no extra term
    plain = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1)).eval()
    plain.load_state_dict(model.state_dict())
    reference = plain(x, generator=torch.Generator().manual_seed(1))
    assert reference.full_length_loss is None and torch.equal(reference.num_tokens, output.num_tokens)
    torch.testing.assert_close(reference.loss, output.reconstruction_loss + vq, rtol=1e-5, atol=1e-6)


def test_full_length_term_trains_the_last_token_even_for_one_token_prefixes():
    torch.manual_seed(0)
    config = SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1, full_length_loss_weight=1.0)
    model = SpectralTokenizer(config)
    captured = []

    def keep_tokens(module, args):
        args[0].retain_grad()
        captured.append(args[0])

    model.decoder.register_forward_pre_hook(keep_tokens)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    model(x, num_tokens=1).loss.backward()  # the nested term sees the first token only
    (tokens,) = captured
    assert tokens.shape[:2] == (4, config.num_latent_tokens)  # one pass: the prefixes, then all N tokens
    assert tokens.grad[:2, 1:].abs().sum() == 0  # the prefix rows never see tokens after their prefix
    assert (tokens.grad[2:, -1].abs().sum(-1) > 0).all()  # the full-length rows train the last token of every sample
    torch.testing.assert_close(tokens[:2], tokens[2:])


def test_full_length_weight_is_validated():
    with pytest.raises(ValueError, match="full_length_loss_weight must be >= 0"):
        SpectralTokenizerConfig.from_preset("tiny-32", full_length_loss_weight=-1)
    with pytest.raises(ValueError, match="spectral_supervision is False"):
        SpectralTokenizerConfig.from_preset("tiny-32", full_length_loss_weight=1, spectral_supervision=False)
    config = SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1, full_length_loss_weight=1,
                                                 pixel_decoder={"hidden_channels": 8, "channel_mult": [1, 2, 2, 2],
                                                                "num_res_blocks": 1, "z_channels": 8,
                                                                "codebook_size": 16, "norm_num_groups": 4})
    with pytest.raises(ValueError, match="decode_pixels=False decodes no pixels"):
        SpectralTokenizer(config)(torch.zeros(1, 1, 32, 32), decode_pixels=False)
