"""One process of the streamed-training check (tests/test_streaming.py), alone or under
`torchrun --nproc_per_node N tests/streaming_worker.py OUT_JSON SCRIPT_FLAGS...`.

A `TrainingRun` over a `StreamLoader` of --train_data_files (whose labels are the image indices) trains a one-weight
model; every rank writes, per optimizer step, the epoch and the labels it trained on to OUT_JSON's `.rankR` file.
"""

import argparse
import json
import sys

import datasets
import torch

from spectralar_hf.training.arguments import (
    OptimizationDefaults,
    add_image_source_arguments,
    add_optimization_arguments,
    add_run_arguments,
)
from spectralar_hf.training.data import LABEL_COLUMNS, ImageTransform, find_column
from spectralar_hf.training.scaffold import TrainingRun
from spectralar_hf.training.streaming import (
    StreamExample,
    StreamLoader,
    load_streamed_source,
    stream_fingerprint,
)


def main(out: str, argv: list[str]) -> None:
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0  # datasets waits 5 s after each parquet pass otherwise
    parser = argparse.ArgumentParser()
    add_optimization_arguments(parser, OptimizationDefaults())
    add_run_arguments(parser, "validate every N")
    data = add_image_source_arguments(parser)
    data.add_argument("--label_column", default=None)
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    args = parser.parse_args(argv)
    run = TrainingRun(args, "stream_test", outputs=())
    accelerator = run.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    source, image_column = load_streamed_source(args, rank=rank, world_size=world)
    label_column = find_column(source, args.label_column, LABEL_COLUMNS, "label")
    loader = StreamLoader(source, StreamExample(ImageTransform(8, 3, random_flip=True), image_column, label_column),
                          args.train_batch_size, seed=args.seed, rank=rank, num_workers=args.dataloader_num_workers,
                          fingerprint=stream_fingerprint(args, world))
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer, scheduler = run.optimizer_and_scheduler(model)
    model, optimizer, loader, scheduler = run.prepare(model, optimizer, loader, scheduler,
                                                      config_record={"model": "linear"}, model_cls=torch.nn.Linear)
    records = []
    for batch in run.batches(loader):
        with accelerator.accumulate(model):
            features = batch["pixel_values"].mean(dim=(1, 2, 3))[:, None]
            loss = model(features).pow(2).mean()
            run.backward_and_step(loss, model, optimizer, scheduler)
        records.append({"epoch": loader.position.epoch, "labels": batch["labels"].tolist(),
                        "pixel_sum": float(batch["pixel_values"].sum())})
        if not run.sync_step():
            continue
        records[-1]["step"] = run.global_step
        run.end_step(model, {"loss": loss.item()}, scheduler)
    with open(f"{out}.rank{rank}", "w") as handle:
        json.dump({"world": world, "records": records}, handle)
    run.end()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
