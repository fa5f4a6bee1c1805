"""--streaming and --train_data_files (training/streaming.py): local parquet and webdataset tar shards written here,
read per rank and per DataLoader worker; every image once per epoch across ranks, the same order for the same seed,
exact resumes (in one process and, through tests/streaming_worker.py, on 2 gloo processes), clear errors."""

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from spectralar_hf.training.arguments import add_image_source_arguments, check_image_source
from spectralar_hf.training.checkpointing import DataProgress
from spectralar_hf.training.data import (
    LABEL_COLUMNS,
    ImageTransform,
    data_files_builder,
    expand_data_files,
    find_column,
    load_training_source,
)
from spectralar_hf.training.streaming import (
    StreamExample,
    StreamLoader,
    load_streamed_source,
    stream_fingerprint,
)

WORKER = Path(__file__).parent / "streaming_worker.py"
NUM_IMAGES, SIDE, BATCH = 48, 8, 4
SHARD_SIZES = (12, 12, 12, 12)


@pytest.fixture(autouse=True)
def no_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s after every shuffled parquet pass (arrow thread shutdown); forked workers inherit this."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def write_shards(root: Path, sizes: tuple[int, ...]) -> dict[str, str]:
    """Random 8x8 RGB images labelled with their index, as parquet files and as webdataset tar shards (PNG + cls)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    start = 0
    for shard, size in enumerate(sizes):
        indices = list(range(start, start + size))
        start += size
        images = [Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)) for _ in indices]
        features = datasets.Features(image=datasets.Image(), label=datasets.Value("int64"))
        datasets.Dataset.from_dict({"image": images, "label": indices}, features=features).to_parquet(
            str(root / f"part-{shard:02d}.parquet"))
        with tarfile.open(root / f"shard-{shard:06d}.tar", "w") as tar:
            for index, image in zip(indices, images):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                for name, payload in ((f"{index:05d}.png", buffer.getvalue()), (f"{index:05d}.cls", b"%d" % index)):
                    member = tarfile.TarInfo(name)
                    member.size = len(payload)
                    tar.addfile(member, io.BytesIO(payload))
    last = len(sizes) - 1
    return {"parquet": str(root / f"part-{{00..{last:02d}}}.parquet"),
            "tar": str(root / f"shard-{{000000..{last:06d}}}.tar")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), SHARD_SIZES)


def data_args(pattern: str, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_image_source_arguments(parser)
    args = parser.parse_args(["--train_data_files", pattern, "--streaming", "--shuffle_buffer_size", "16"])
    values = dict(vars(args), seed=0, max_train_samples=None, label_column=None)
    values.update(overrides)
    return argparse.Namespace(**values)


def make_loader(args, rank=0, world=1, workers=0, example=None) -> StreamLoader:
    source, image_column = load_streamed_source(args, rank=rank, world_size=world)
    label_column = find_column(source, None, LABEL_COLUMNS, "label")
    example = example or StreamExample(ImageTransform(SIDE, 3, random_flip=True), image_column, label_column)
    return StreamLoader(source, example, BATCH, seed=args.seed, rank=rank, num_workers=workers,
                        fingerprint=stream_fingerprint(args, world))


def epoch(loader: StreamLoader, stop: int | None = None) -> list[dict]:
    """The batches of one epoch from the loader's position (consumed), the first `stop` only."""
    batches = []
    for batch, marker in loader:
        if stop is not None and len(batches) == stop:
            break
        loader.consume(marker)
        batches.append(batch)
    return batches


def labels(batches: list[dict]) -> list[int]:
    return [label for batch in batches for label in batch["labels"].tolist()]


def test_brace_patterns_expand_and_the_suffix_picks_the_builder():
    assert expand_data_files("s/{000000..000002}.tar") == ["s/000000.tar", "s/000001.tar", "s/000002.tar"]
    assert expand_data_files(["a/{x,y}.parquet", "b.parquet"]) == ["a/x.parquet", "a/y.parquet", "b.parquet"]
    assert data_files_builder(["a.tar", "b.TAR"]) == "webdataset"
    assert data_files_builder(["a.parquet"]) == "parquet"
    with pytest.raises(ValueError, match=r"must all be one of .tar, .parquet, .arrow.*\['.parquet', '.tar'\]"):
        data_files_builder(["a.tar", "b.parquet"])
    with pytest.raises(ValueError, match=r"\['.zip'\]"):
        data_files_builder(["a.zip"])


@pytest.mark.parametrize("kind, world, workers", [("tar", 1, 0), ("tar", 1, 2), ("tar", 2, 0), ("tar", 2, 2),
                                                  ("tar", 3, 2), ("parquet", 2, 2), ("parquet", 3, 0)])
def test_every_image_is_seen_once_per_epoch_across_ranks(shards, kind, world, workers):
    """4 shards on 2 ranks are split by shard, on 3 ranks one example in 3 (datasets' rule); either way the ranks'
    batches hold every image exactly once (no incomplete batch is dropped with these sizes)."""
    args = data_args(shards[kind])
    seen = []
    for rank in range(world):
        batches = epoch(make_loader(args, rank, world, workers))
        assert all(batch["pixel_values"].shape == (BATCH, 3, SIDE, SIDE) for batch in batches)
        assert all(batch["pixel_values"].abs().max() <= 1 for batch in batches)
        seen += labels(batches)
    assert sorted(seen) == list(range(NUM_IMAGES))


def test_the_order_depends_on_the_seed_and_the_epoch_only(shards):
    args = data_args(shards["tar"])
    first = labels(epoch(make_loader(args, workers=2)))
    assert labels(epoch(make_loader(args, workers=2))) == first  # same seed: same order
    assert first != list(range(NUM_IMAGES))  # shuffled
    assert labels(epoch(make_loader(data_args(shards["tar"], seed=1), workers=2))) != first
    loader = make_loader(args, workers=2)
    loader.position.next_epoch()
    second = labels(epoch(loader))
    assert second != first and sorted(second) == sorted(first)


def test_parquet_and_tar_shards_give_the_same_pixels(shards):
    """The same images through either format (the tar holds PNGs of the parquet's images) and through the
    map-style path (`load_training_source`, no --streaming)."""
    def by_label(pattern):
        batches = epoch(make_loader(data_args(pattern), example=None))
        pixels = torch.cat([batch["pixel_values"] for batch in batches])
        order = torch.tensor(labels(batches)).argsort()
        return pixels[order]

    assert torch.equal(by_label(shards["parquet"]), by_label(shards["tar"]))
    mapped = load_training_source(data_args(shards["tar"], streaming=False))
    assert sorted(mapped["cls"]) == list(range(NUM_IMAGES)) and len(mapped) == NUM_IMAGES


@pytest.mark.parametrize("workers, stop", [(0, 3), (2, 3), (3, 1), (3, 5)])
def test_a_resumed_stream_continues_with_the_exact_batches(shards, workers, stop):
    """Stopped after `stop` batches and continued by a new loader from the saved position: the same batches
    (labels and augmented pixels) as one uninterrupted epoch. With 3 workers on 4 shards the workers' shares differ
    in size and the next batch is not worker 0's: the position records both."""
    args = data_args(shards["parquet"])
    full = epoch(make_loader(args, workers=workers))
    first = make_loader(args, workers=workers)
    head = epoch(first, stop=stop)
    resumed = make_loader(args, workers=workers)
    resumed.position.load_list(first.position.to_list())
    rest = epoch(resumed)
    assert len(head) + len(rest) == len(full) == NUM_IMAGES // BATCH
    for got, want in zip(head + rest, full):
        assert torch.equal(got["labels"], want["labels"])
        assert torch.equal(got["pixel_values"], want["pixel_values"])


def test_skipped_examples_are_read_but_not_decoded(shards):
    args = data_args(shards["tar"])
    source, image_column = load_streamed_source(args)

    class Counting(StreamExample):
        calls = 0

        def __call__(self, example, rng):
            Counting.calls += 1
            return super().__call__(example, rng)

    example = Counting(ImageTransform(SIDE, 3), image_column, "cls")
    first = make_loader(args, example=example)
    epoch(first, stop=5)
    resumed = make_loader(args, example=example)
    resumed.position.load_list(first.position.to_list())
    Counting.calls = 0
    rest = epoch(resumed)
    assert Counting.calls == len(labels(rest)) == NUM_IMAGES - 5 * BATCH


def test_a_position_saved_with_other_settings_is_refused(shards):
    args = data_args(shards["tar"])
    saved = make_loader(args, workers=2).fingerprint
    with pytest.raises(ValueError, match=r"other settings: num_workers 2 \(now 0\).*same data flags, "
                                         r"--dataloader_num_workers"):
        make_loader(args, workers=0).check_resumable(saved)
    progress = DataProgress()
    progress.stream = make_loader(args)
    with pytest.raises(ValueError, match="saved without --streaming"):
        progress.load_state_dict({"micro_step": 3})
    with pytest.raises(ValueError, match="saved with --streaming"):
        DataProgress().load_state_dict({"micro_step": 3, "stream": {"fingerprint": saved, "positions": [[0] * 5]}})


def test_streaming_flags_are_checked(shards, tmp_path):
    parser = argparse.ArgumentParser(prog="script")
    add_image_source_arguments(parser)

    def check(*argv):
        check_image_source(parser, parser.parse_args(list(argv)))

    (tmp_path / "idx").mkdir()
    with pytest.raises(SystemExit):
        check("--idx_data_dir", str(tmp_path / "idx"), "--streaming")
    with pytest.raises(SystemExit):
        check("--train_data_files", shards["tar"], "--dataset_name", "x")
    check("--train_data_files", shards["tar"], "--streaming")
    with pytest.raises(ValueError, match="--streaming reads a `datasets` source"):
        load_streamed_source(data_args(shards["tar"], train_data_files=None, idx_data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--image_column 'photo' is not a column"):
        load_streamed_source(data_args(shards["tar"], image_column="photo"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path: Path, name: str, pattern: str, processes: int, *flags) -> list[dict]:
    """Run tests/streaming_worker.py on `processes` gloo ranks; every rank's records."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / f"{name}.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(out), "--train_data_files", pattern,
               "--streaming", "--shuffle_buffer_size", "16", "--train_batch_size", str(BATCH), "--report_to", "none",
               "--output_dir", str(tmp_path / "run"), *map(str, flags)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in range(processes)]


def test_a_streamed_training_run_on_gloo_processes_ends_epochs_together_and_resumes_exactly(tmp_path):
    """TrainingRun over a StreamLoader on 2 gloo ranks with 2 DataLoader workers each, on shards of 8, 8, 8 and 24
    images split by shard: one rank's share is 16 images, the other's 32. Both ranks end every epoch after the
    shorter share's 4 batches (so that they take the same steps), no image comes twice in an epoch, and a run stopped
    at a checkpoint (step 6, inside the second epoch) and resumed trains on the same batches, augmented
    identically, as the uninterrupted run."""
    pattern = write_shards(tmp_path / "uneven", (8, 8, 8, 24))["tar"]
    processes, steps = 2, 10
    common = ("--dataloader_num_workers", 2, "--checkpointing_steps", 6)
    whole = launch(tmp_path / "whole", "whole", pattern, processes, "--max_train_steps", steps, *common)
    assert all(report["world"] == processes for report in whole)
    per_epoch = [[sum(record["epoch"] == number for record in report["records"]) for number in (0, 1, 2)]
                 for report in whole]
    assert per_epoch[0] == per_epoch[1] == [16 // BATCH, 16 // BATCH, steps - 2 * 16 // BATCH]
    for number in (0, 1):
        seen = [label for report in whole for record in report["records"] if record["epoch"] == number
                for label in record["labels"]]
        assert len(seen) == len(set(seen)) == 2 * 16
    launch(tmp_path / "split", "first", pattern, processes, "--max_train_steps", 6, *common)
    rest = launch(tmp_path / "split", "rest", pattern, processes, "--max_train_steps", steps,
                  "--resume_from_checkpoint", "latest", *common)
    first = [json.loads(Path(tmp_path / "split" / f"first.json.rank{rank}").read_text())
             for rank in range(processes)]
    for rank in range(processes):
        assert first[rank]["records"] + rest[rank]["records"] == whole[rank]["records"]


# --- the training scripts with --streaming -----------------------------------------------------------------------

def script_args(pattern: str, output: Path, *extra) -> list:
    return ["--train_data_files", pattern, "--streaming", "--shuffle_buffer_size", 16, "--output_dir", output,
            "--train_batch_size", BATCH, "--report_to", "none", "--logging_steps", 1, "--validation_steps", 1000,
            "--lr_warmup_steps", 1, "--random_flip", *extra]


@pytest.mark.same_machine
def test_train_vqgan_streams_shards_and_resumes_to_the_same_weights(shards, tmp_path):
    """train_vqgan.py --streaming over tar shards with 2 DataLoader workers: stopped at step 13 (one batch into the
    second epoch of 12 batches) and resumed to 14, the weights equal an uninterrupted 14-step run's; the evaluation
    set is the stream's first --eval_samples images."""
    from test_training_scripts import assert_same_weights, run_in_process

    script = str(Path(__file__).parents[1] / "examples" / "train_vqgan.py")
    common = ["--preset", "tiny", "--dataloader_num_workers", 2, "--checkpointing_steps", 13, "--eval_samples", 6,
              "--lr_scheduler", "constant"]  # the schedule does not depend on --max_train_steps
    run_in_process(script, *script_args(shards["tar"], tmp_path / "whole", *common, "--max_train_steps", 14))
    run_in_process(script, *script_args(shards["tar"], tmp_path / "split", *common, "--max_train_steps", 13))
    run_in_process(script, *script_args(shards["tar"], tmp_path / "split", *common, "--max_train_steps", 14,
                                        "--resume_from_checkpoint", "latest"))
    assert_same_weights(tmp_path / "whole" / "vqgan" / "model.safetensors",
                        tmp_path / "split" / "vqgan" / "model.safetensors")
    stats = json.loads((tmp_path / "whole" / "vqgan_stats.json").read_text())
    assert stats["num_images"] == 6
    # the evaluation set: the first 6 images of the unshuffled stream, centre-cropped (not the shuffled training order)
    from test_training_scripts import load_script

    from spectralar_hf import MaskGITVQGAN
    from spectralar_hf.training.streaming import StreamHead

    vqgan = MaskGITVQGAN.from_pretrained(tmp_path / "whole" / "vqgan")
    config = vqgan.config
    head = StreamHead(data_args(shards["tar"]), StreamExample(ImageTransform(config.image_size, config.num_channels),
                                                              "png"), 6)
    assert [int(example["__key__"]) for example in head.examples] == list(range(6))
    expected = load_script(script).evaluate(vqgan, head, 6, BATCH)
    assert stats["psnr"] == pytest.approx(expected["psnr"], rel=1e-5)


@pytest.mark.parametrize("script, extra, product", [
    ("train_tokenizer.py", ["--preset", "tiny-32"], "tokenizer/model.safetensors"),
    ("train_vae.py", ["--preset", "tiny", "--scaling_samples", 5], "vae/diffusion_pytorch_model.safetensors"),
])
def test_the_other_autoencoder_scripts_train_on_a_stream(shards, tmp_path, script, extra, product):
    from test_training_scripts import run_in_process

    path = str(Path(__file__).parents[1] / "examples" / script)
    run_in_process(path, *script_args(shards["parquet"], tmp_path / "out", *extra, "--max_train_steps", 2,
                                      "--checkpointing_steps", 2))
    assert (tmp_path / "out" / product).is_file()
    states = [torch.load(path, weights_only=False)
              for path in sorted((tmp_path / "out" / "checkpoint-2").glob("custom_checkpoint_*.pkl"))]
    saved = next(state for state in states if isinstance(state, dict) and "stream" in state)
    assert saved["stream"]["positions"] == [[0, 2, 0, 2 * BATCH]]  # epoch 0, 2 batches, 8 images of worker 0
    if script == "train_vae.py":  # the latent std is measured on the stream's first --scaling_samples images
        assert json.loads((tmp_path / "out" / "latent_stats.json").read_text())["num_images"] == 5
