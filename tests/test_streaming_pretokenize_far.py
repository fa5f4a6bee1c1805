"""--streaming and --train_data_files in examples/pretokenize.py and examples/train_far.py, and the FAR latent cache
decoded in DataLoader workers, on tiny generated tar (webdataset) and parquet shards with tiny random models.

pretokenize: streamed codes equal the map-style ones (as a set; the order of a stream is rank / worker major), with 0
and 2 workers; a run interrupted after its first chunk continues exactly; changed stream flags are refused.
train_far: --streaming trains on the VAE's on-the-fly encoding of the streamed images, which is the latent cache's
math, with captions through the stream; --latents_dir with --streaming is refused; the cache is the same with 0 and 2
workers and holds the VAE's posterior moments of each batch; a streamed run resumes exactly (the stream's DataLoader
must not draw from the global RNG that a resume restores).

The scripts run in-process (`main()`) on one thread; every image's label is its index, so rows can be matched.
"""

import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from spectralar_hf import FARTransformer, SpectralTokenizer, SpectralTokenizerConfig
from spectralar_hf.training.data import ImageTransform
from spectralar_hf.vae_presets import VAE_PRESETS

ROOT = Path(__file__).parents[1]
PRETOKENIZE_SCRIPT = str(ROOT / "examples" / "pretokenize.py")
FAR_SCRIPT = str(ROOT / "examples" / "train_far.py")
NUM_IMAGES, NUM_SHARDS = 24, 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_stream_shutdown_sleep(monkeypatch):
    """`datasets` sleeps 5 s at the end of every shuffled parquet stream pass; forked workers inherit the patch."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def load_script(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script, *args) -> None:
    """`script` (a path, or a module loaded by `load_script`) run through its main() here, then accelerate's
    singletons are reset for the next run."""
    from accelerate.state import AcceleratorState, GradientState

    module = load_script(script) if isinstance(script, str) else script
    try:
        module.main([str(a) for a in args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def sample_images() -> list[Image.Image]:
    """RGB noise of 40 x 36 (resized and centre-cropped by the scripts)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)) for _ in range(NUM_IMAGES)]


def pixels_of(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([ImageTransform(32, 3)(image) for image in images])


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The same 24 images with labels 0..23 as 4 webdataset tar shards ({key}.png + {key}.cls) and 4 parquet files."""
    root = tmp_path_factory.mktemp("shards")
    images = sample_images()
    per_shard = NUM_IMAGES // NUM_SHARDS
    for shard in range(NUM_SHARDS):
        indices = range(shard * per_shard, (shard + 1) * per_shard)
        with tarfile.open(root / f"train-{shard:06d}.tar", "w") as tar:
            for index in indices:
                buffer = io.BytesIO()
                images[index].save(buffer, format="PNG")
                members = ((f"{index:05d}.png", buffer.getvalue()), (f"{index:05d}.cls", str(index).encode()))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        features = datasets.Features(image=datasets.Image(), label=datasets.Value("int64"))
        datasets.Dataset.from_dict({"image": [images[i] for i in indices], "label": list(indices)},
                                   features=features).to_parquet(str(root / f"part-{shard:02d}.parquet"))
    return root


TARS = "train-{000000..000003}.tar"
PARQUETS = "part-{00..03}.parquet"


# ---------------------------------------------------------------------------------------------------------------
# pretokenize.py
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    SpectralTokenizer(SpectralTokenizerConfig.from_preset("tiny-32")).eval().save_pretrained(path)
    return path


def pretokenize_args(tokenizer_dir: Path, shards: Path, output: Path, *extra) -> list:
    return ["--tokenizer", tokenizer_dir, "--train_data_files", shards / TARS, "--flip", "--batch_size", 5,
            "--output_dir", output, *extra]


def rows(output: Path) -> list[tuple]:
    data = datasets.load_from_disk(str(output / "data"))
    return list(zip(data["label"], data["flipped"], map(tuple, data["codes"])))


@pytest.fixture(scope="module")
def map_style_codes(tokenizer_dir, shards, tmp_path_factory) -> Path:
    """pretokenize over the tar shards read map-style (--train_data_files without --streaming)."""
    output = tmp_path_factory.mktemp("codes-map")
    run(PRETOKENIZE_SCRIPT, *pretokenize_args(tokenizer_dir, shards, output, "--num_shards", 2))
    return output


@pytest.fixture(scope="module")
def streamed_codes(tokenizer_dir, shards, tmp_path_factory) -> Path:
    """pretokenize --streaming over the tar shards with 2 workers, in chunks of 7 images."""
    output = tmp_path_factory.mktemp("codes-stream")
    run(PRETOKENIZE_SCRIPT, *pretokenize_args(tokenizer_dir, shards, output, "--streaming", "--stream_chunk_rows", 7,
                                              "--dataloader_num_workers", 2))
    return output


def test_pretokenize_reads_tar_shards_map_style(map_style_codes, tokenizer_dir, shards):
    found = rows(map_style_codes)
    assert sorted((label, flipped) for label, flipped, _ in found) == sorted(
        (i, f) for i in range(NUM_IMAGES) for f in (False, True))
    assert len({codes for _, _, codes in found}) > NUM_IMAGES  # a random tokenizer, but not a constant one
    tokenizer = SpectralTokenizer.from_pretrained(tokenizer_dir).eval()
    with torch.no_grad():  # image 3 (decoded from its PNG in the tar) and its mirror
        pixels = pixels_of(sample_images()[3:4])
        expected = tokenizer.encode(torch.cat([pixels, pixels.flip(-1)])).codes.tolist()
    by_key = {(label, flipped): list(codes) for label, flipped, codes in found}
    assert [by_key[(3, False)], by_key[(3, True)]] == expected
    settings = json.loads((map_style_codes / "pretokenize_settings.json").read_text())
    assert settings["train_data_files"] == [str(shards / TARS)] and "streaming" not in settings


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_pretokenize_equals_map_style(workers, map_style_codes, streamed_codes, tokenizer_dir, shards,
                                               tmp_path):
    """The streamed codes are the map-style ones (as a set), with 0 and 2 decoding workers."""
    if workers == 2:
        output = streamed_codes
    else:
        output = tmp_path / "codes"
        run(PRETOKENIZE_SCRIPT, *pretokenize_args(tokenizer_dir, shards, output, "--streaming",
                                                  "--stream_chunk_rows", 7))
    assert sorted(rows(output)) == sorted(rows(map_style_codes))
    info = json.loads((output / "pretokenize.json").read_text())
    assert info["num_images"] == NUM_IMAGES and info["num_rows"] == 2 * NUM_IMAGES
    chunks = sorted((output / "shards" / "rank-00000").glob("chunk-*"))
    assert len(chunks) == 3  # batches of 5 images (2 per worker and shard pair); a chunk once >= 7: 10, 10, 4
    assert json.loads((chunks[-1] / "stream_position.json").read_text())["images"] == NUM_IMAGES


def test_streamed_pretokenize_resumes_exactly_after_an_interruption(streamed_codes, tokenizer_dir, shards, tmp_path,
                                                                    monkeypatch):
    """Interrupted after its first chunk, a rerun continues from the saved stream position: the same codes in the
    same order as the uninterrupted run, the finished chunk kept, nothing encoded twice."""
    args = pretokenize_args(tokenizer_dir, shards, tmp_path / "codes", "--streaming", "--stream_chunk_rows", 7,
                            "--dataloader_num_workers", 2)
    module = load_script(PRETOKENIZE_SCRIPT)
    save_rows = module.save_rows

    def save_then_stop(final, *rest):
        save_rows(final, *rest)
        raise Interrupted("after the first chunk")

    monkeypatch.setattr(module, "save_rows", save_then_stop)
    with pytest.raises(Interrupted):
        run(module, *args)
    folder = tmp_path / "codes" / "shards" / "rank-00000"
    assert [path.name for path in sorted(folder.iterdir())] == ["chunk-00000"]
    kept = (folder / "chunk-00000").stat().st_mtime_ns

    module = load_script(PRETOKENIZE_SCRIPT)
    encoded = []
    encode = SpectralTokenizer.encode

    def counting_encode(self, images, *rest, **kwargs):
        encoded.append(len(images))
        return encode(self, images, *rest, **kwargs)

    monkeypatch.setattr(SpectralTokenizer, "encode", counting_encode)
    run(module, *args)
    assert rows(tmp_path / "codes") == rows(streamed_codes)
    assert (folder / "chunk-00000").stat().st_mtime_ns == kept
    assert sum(encoded) == 2 * (NUM_IMAGES - 10)  # the 10 images of the first chunk (and mirrors) not again


def test_streamed_pretokenize_refuses_other_stream_settings(streamed_codes, tokenizer_dir, shards, capsys):
    with pytest.raises(ValueError, match="other settings.*streaming"):
        run(PRETOKENIZE_SCRIPT, *pretokenize_args(tokenizer_dir, shards, streamed_codes, "--streaming",
                                                  "--stream_chunk_rows", 7, "--dataloader_num_workers", 1))
    with pytest.raises(ValueError, match="other settings.*streaming"):  # the same folder without --streaming
        run(PRETOKENIZE_SCRIPT, *pretokenize_args(tokenizer_dir, shards, streamed_codes))
    with pytest.raises(SystemExit) as error:
        run(PRETOKENIZE_SCRIPT, *pretokenize_args(tokenizer_dir, shards, streamed_codes, "--streaming",
                                                  "--num_shards", 2))
    assert error.value.code == 2 and "--num_shards" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# train_far.py
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A tiny random RGB AutoencoderKL (32 px -> 4 x 8 x 8) with a scaling and a shift factor."""
    torch.manual_seed(0)
    stages = len(VAE_PRESETS["tiny"]["block_out_channels"])
    config = {**VAE_PRESETS["tiny"], "in_channels": 3, "out_channels": 3, "scaling_factor": 0.7, "shift_factor": 0.1,
              "down_block_types": ["DownEncoderBlock2D"] * stages, "up_block_types": ["UpDecoderBlock2D"] * stages}
    path = tmp_path_factory.mktemp("vae") / "vae"
    AutoencoderKL(**config).eval().save_pretrained(path)
    return path


def far_args(vae_dir: Path, data_files: Path, output: Path, *extra, classes: tuple = (0,)) -> list:
    return ["--vae", vae_dir, "--train_data_files", data_files, "--preset", "tiny", "--output_dir", output,
            "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000, "--lr_warmup_steps", 1,
            "--checkpointing_steps", 1000, "--train_batch_size", 4, "--validation_images_per_class", 1,
            "--validation_num_inference_steps", 1, "--validation_diffusion_steps", 1,
            *(["--validation_classes", *classes] if classes else []), *extra]


def encoded(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled, shifted posterior means and scaled stds of `pixels` in one batch."""
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    scaling, shift = vae.config.scaling_factor, vae.config.shift_factor
    return (posterior.mean - shift) * scaling, posterior.std * scaling


def test_far_streaming_trains_on_the_vae_encoding_of_the_streamed_images(vae_dir, shards, tmp_path, monkeypatch):
    seen = []
    forward = FARTransformer.forward

    def recording_forward(self, latents, *args, **kwargs):
        seen.append((latents.detach().clone(), kwargs["class_labels"].clone()))
        return forward(self, latents, *args, **kwargs)

    monkeypatch.setattr(FARTransformer, "forward", recording_forward)
    output = tmp_path / "far"
    run(FAR_SCRIPT, *far_args(vae_dir, shards / PARQUETS, output, "--streaming", "--flip", "--shuffle_buffer_size", 8,
                              "--dataloader_num_workers", 2, "--max_train_steps", 3))
    assert not (output / "latents").exists()  # no cache
    assert (output / "pipeline" / "model_index.json").is_file()
    assert len(json.loads((output / "pipeline" / "transformer" / "config.json").read_text())["id2label"]) == NUM_IMAGES
    latents, labels = seen[0]
    assert latents.shape == (4, 4, 8, 8)
    assert labels.tolist() != [0, 1, 2, 3]  # shuffled
    # each latent is the VAE encoding of its image or (random --flip) of its mirror, as the cache would hold it
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    images = sample_images()
    pixels = pixels_of([images[i] for i in labels])
    plain, mirrored = encoded(vae, pixels)[0], encoded(vae, pixels.flip(-1))[0]
    for row in range(len(labels)):
        error = min((latents[row] - plain[row]).abs().max(), (latents[row] - mirrored[row]).abs().max())
        assert error < 1e-5 * max(float(plain.abs().max()), 1.0), row
    # the second step trains on other images (the stream goes on)
    assert set(seen[1][1].tolist()).isdisjoint(labels.tolist())


def test_far_streaming_refuses_latents_dir(vae_dir, shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        run(FAR_SCRIPT, *far_args(vae_dir, shards / PARQUETS, tmp_path / "far", "--streaming", "--latents_dir",
                                  tmp_path / "latents", "--max_train_steps", 1))
    assert error.value.code == 2 and "--latents_dir" in capsys.readouterr().err
    assert not (tmp_path / "far").exists()


def test_far_latent_cache_with_workers_is_the_same(vae_dir, shards, tmp_path):
    """The cache built with 2 decoding workers equals the one without, and holds the VAE's posterior moments of
    each --encode_batch_size batch (its images, then their mirrors), as the former `datasets.map` path did."""
    caches = {}
    for workers in (0, 2):
        output = tmp_path / f"far-{workers}"
        run(FAR_SCRIPT, *far_args(vae_dir, shards / PARQUETS, output, "--flip", "--latent_distribution", "sample",
                                  "--encode_batch_size", 5, "--dataloader_num_workers", workers,
                                  "--max_train_steps", 1))
        caches[workers] = datasets.load_from_disk(str(output / "latents"))
    plain, with_workers = caches[0], caches[2]
    assert plain.features == with_workers.features and len(plain) == 2 * NUM_IMAGES
    for column in plain.column_names:
        assert plain[column] == with_workers[column], column
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    images = sample_images()
    rows = plain.with_format("torch")
    for start in (0, 20):  # the first batch and the last (4 images): its images then their mirrors
        batch = images[start : start + 5]
        pixels = pixels_of(batch)
        means, stds = map(torch.cat, zip(encoded(vae, pixels), encoded(vae, pixels.flip(-1))))
        cached = rows[2 * start : 2 * start + 2 * len(batch)]
        assert cached["label"].tolist() == 2 * list(range(start, start + len(batch)))
        assert cached["flipped"].tolist() == [False] * len(batch) + [True] * len(batch)
        torch.testing.assert_close(cached["latents"], means, rtol=0, atol=1e-6)
        torch.testing.assert_close(cached["latents_std"], stds, rtol=0, atol=1e-6)


def test_far_streaming_with_a_caption_column(vae_dir, tmp_path, monkeypatch):
    """--streaming --caption_column: each batch's captions come through the stream with their images (no class
    names needed), and the validation prompts are the first distinct captions of the stream."""
    from transformers import BertConfig, BertModel, BertTokenizer

    text_dir = tmp_path / "text"
    text_dir.mkdir()
    (text_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nup\ndown\ndog\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=32)).save_pretrained(text_dir)
    BertTokenizer(str(text_dir / "vocab.txt"), model_max_length=16).save_pretrained(text_dir)
    images = sample_images()[:8]
    captions = [("up" if index % 2 else "down") + " dog" for index in range(8)]
    features = datasets.Features(image=datasets.Image(), label=datasets.Value("int64"),
                                 caption=datasets.Value("string"))
    datasets.Dataset.from_dict({"image": images, "label": list(range(8)), "caption": captions},
                               features=features).to_parquet(str(tmp_path / "captions.parquet"))
    module = load_script(FAR_SCRIPT)
    texts, forward = [], FARTransformer.forward

    def recording_forward(self, latents, *args, **kwargs):
        if self.training:
            texts.append(None)  # a training step; its captions follow from encode_prompt
        return forward(self, latents, *args, **kwargs)

    encode_prompt = module.encode_prompt

    def recording_encode_prompt(encoder, tokenizer, prompts, *args):
        texts.append(list(prompts))
        return encode_prompt(encoder, tokenizer, prompts, *args)

    log_samples, grids = module.log_samples, []

    def recording_log_samples(*args):
        grids.append(args[-1])
        return log_samples(*args)

    monkeypatch.setattr(module, "encode_prompt", recording_encode_prompt)
    monkeypatch.setattr(module, "log_samples", recording_log_samples)
    monkeypatch.setattr(FARTransformer, "forward", recording_forward)
    output = tmp_path / "far"
    run(module, *far_args(vae_dir, tmp_path / "captions.parquet", output, "--streaming", "--text_encoder", text_dir,
                          "--caption_column", "caption", "--max_train_steps", 2, classes=()))
    steps = [texts[i - 1] for i, item in enumerate(texts) if item is None]  # the captions encoded before each step
    assert len(steps) == 2 and all(len(batch) == 4 and set(batch) <= {"up dog", "down dog"} for batch in steps)
    assert grids == [["down dog", "up dog"]]  # the final grid's prompts: the stream's first distinct captions
    assert (output / "pipeline" / "model_index.json").is_file() and not (output / "latents").exists()


def test_far_streaming_resumes_exactly(vae_dir, shards, tmp_path, monkeypatch):
    """Interrupted right after its checkpoint at step 3 (in the middle of the first epoch: 6 batches of 4), a
    streamed run resumed from it ends with the weights of the uninterrupted run: the stream continues at the exact
    batch (2 decoding workers, random flips, posterior samples)."""
    from safetensors.torch import load_file

    from spectralar_hf.training import scaffold

    common = ["--streaming", "--flip", "--latent_distribution", "sample", "--shuffle_buffer_size", 8,
              "--dataloader_num_workers", 2, "--max_train_steps", 8, "--checkpointing_steps", 3,
              "--config_overrides", json.dumps({"num_classes": NUM_IMAGES})]
    run(FAR_SCRIPT, *far_args(vae_dir, shards / PARQUETS, tmp_path / "straight", *common))
    save_checkpoint = scaffold.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        raise Interrupted("after the first checkpoint")

    interrupted = far_args(vae_dir, shards / PARQUETS, tmp_path / "killed", *common)
    with monkeypatch.context() as patch:
        patch.setattr(scaffold, "save_checkpoint", save_then_stop)
        with pytest.raises(Interrupted):
            run(FAR_SCRIPT, *interrupted)
    assert (tmp_path / "killed" / "checkpoint-3").is_dir() and not (tmp_path / "killed" / "pipeline").exists()
    run(FAR_SCRIPT, *interrupted, "--resume_from_checkpoint", "latest")
    straight, resumed = (load_file(tmp_path / name / "pipeline" / "transformer" / "model.safetensors")
                         for name in ("straight", "killed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
