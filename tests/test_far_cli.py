"""`spectralar-hf generate / info / evaluate pipeline` with a FARPipeline: the grid is the pipeline's images, the
strip has one column per chosen outer step, FAR-only and SpectralAR-only flags are refused for the other kind."""

import json

import numpy as np
import pytest
import torch
from conftest import blob_images, write_idx_dataset
from diffusers import AutoencoderKL
from PIL import Image
from test_cli import run
from test_evaluate_cli import StandIn

from spectralar_hf import (
    FARConfig,
    FARPipeline,
    FARTransformer,
    SpectralARConfig,
    SpectralARForCausalLM,
    SpectralARPipeline,
    SpectralTokenizer,
    SpectralTokenizerConfig,
    build_noise_scheduler,
)
from spectralar_hf.visualization import prefix_strip

NAMES = dict(enumerate(["tee", "trouser", "pullover"]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("far_cli")
    torch.manual_seed(0)
    transformer = FARTransformer(FARConfig.from_preset("tiny", num_classes=3, id2label=NAMES,
                                                       diffusion_steps=4)).eval()
    vae = AutoencoderKL(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[8, 8, 8],
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4).eval()
    FARPipeline(vae=vae, transformer=transformer, scheduler=build_noise_scheduler(transformer.config)
                ).save_pretrained(root / "far")
    SpectralARPipeline(tokenizer=SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")),
                       transformer=SpectralARForCausalLM(SpectralARConfig.from_preset("tiny"))
                       ).save_pretrained(root / "spectralar")
    torch.jit.script(StandIn().eval()).save(str(root / "standin.pt"))
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(24, seed=2)), np.arange(24) % 3)
    return root


def test_generate_grid_is_the_pipelines_images_and_strip_has_the_outer_steps(setup, tmp_path, capsys):
    grid, strip = tmp_path / "grid.png", tmp_path / "strip.png"
    status, out, err = run(capsys, "generate", setup / "far", "--classes", "0", "trouser", "--num-per-class", 2,
                           "--seed", 3, "--num-inference-steps", 4, "--diffusion-steps", 5, "--guidance-scale", 2.0,
                           "--output", grid, "--strip", strip)
    assert status == 0, err
    assert "classes [0, 1]" in out and "latents (4, 4, 8, 8)" in out
    pipe = FARPipeline.from_pretrained(setup / "far")
    images = pipe([0, 0, 1, 1], num_inference_steps=4, diffusion_steps=5, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(3)).images
    expected = prefix_strip([images[:2], images[2:]], row_labels=["tee", "trouser"])
    assert np.array_equal(np.asarray(Image.open(grid)), np.asarray(expected))
    strip_image = Image.open(strip)
    assert strip_image.width >= 4 * 96 and strip_image.height >= 2 * 96  # 4 outer steps x 2 classes


def test_info_describes_the_far_pipeline(setup, capsys):
    status, out, _ = run(capsys, "info", setup / "far")
    assert status == 0 and "FAR pipeline" in out and "4 x 8 x 8 latents" in out and "1=trouser" in out


def test_evaluate_far_pipeline_report(setup, capsys):
    report_path = setup / "far.json"
    status, out, err = run(capsys, "evaluate", "pipeline", setup / "far", "--idx-data-dir", setup / "idx",
                           "--num-images", 6, "--samples-per-class", 2, "--num-inference-steps", 2,
                           "--diffusion-steps", 3, "--floor-split", "train", "--inception", setup / "standin.pt",
                           "--report", report_path)
    assert status == 0, err
    report = json.loads(report_path.read_text())
    assert report["num_samples"] == 6 and report["classes"] == [0, 1, 2]
    assert report["sampling"]["num_inference_steps"] == 2 and report["sampling"]["diffusion_steps"] == 3
    assert np.isfinite(report["gfid"]) and np.isfinite(report["fid_floor"])


@pytest.mark.parametrize(
    "pipeline,args,message",
    [
        ("far", ["--top-k", "5"], "--top-k does not apply to a FARPipeline"),
        ("far", ["--num-tokens", "4"], "--num-tokens does not apply to a FARPipeline"),
        ("spectralar", ["--num-inference-steps", "4"], "--num-inference-steps does not apply to a SpectralAR"),
        ("far", ["--diffusion-steps", "fast"], "expected 'linear' or an int"),
    ],
)
def test_flags_of_the_other_pipeline_kind_are_errors(setup, tmp_path, capsys, pipeline, args, message):
    status, _, err = run(capsys, "generate", setup / pipeline, "--classes", "1", *args, "--output", tmp_path / "x.png")
    assert status == 2 and message in err, err


def test_evaluate_truncation_is_refused_for_far(setup, capsys):
    status, _, err = run(capsys, "evaluate", "pipeline", setup / "far", "--idx-data-dir", setup / "idx",
                         "--trunc", 4, "--inception", setup / "standin.pt")
    assert status == 2 and "SpectralAR pipelines only" in err
