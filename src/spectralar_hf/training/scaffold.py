"""The run scaffolding every training script in `examples/` shares, written once.

A script keeps what is its own (arguments, data, model, the loss of one step) and hands the rest to a
[`TrainingRun`]: the accelerator, the output-dir and resume rules, the optimizer and schedule, EMA, the position in
the data, logging, checkpoints, the full (unsharded) model for validation and the final save, and the run's end.

    run = TrainingRun(args, "train_generator", outputs=("pipeline",))
    optimizer, scheduler = run.optimizer_and_scheduler(model)
    model, optimizer, loader, scheduler = run.prepare(model, optimizer, loader, scheduler, config_record=record,
                                                      model_cls=SpectralARForCausalLM)
    for batch in run.batches(loader):
        with run.accelerator.accumulate(model):
            loss = ...
            run.check_finite({"loss": loss})
            run.backward_and_step(loss, model, optimizer, scheduler)
        if not run.sync_step():
            continue
        run.end_step(model, lambda: {"loss": loss.detach().item()}, scheduler)
        if run.validation_due:
            with run.full_model(model) as full:  # every rank: gathers sharded weights
                if full is not None:  # the main process
                    save_samples(full)
    with run.full_model(model, final=True) as final:
        if final is not None:
            final.save_pretrained(...)
    run.end()

Under FSDP (accelerate's FSDP1 or FSDP2) the EMA is built from the prepared, sharded parameters and gathered with
them; `full_model` builds an unsharded copy on the main process from the full state dict. DeepSpeed is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedType, ProjectConfiguration, send_to_device, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .checkpointing import (
    DataProgress,
    append_jsonl,
    end_run,
    plan_run,
    resume,
    save_checkpoint,
    schedule_changes,
    start_run,
)
from .finite import check_finite_loss, check_finite_state, check_mixed_precision
from .optim import decay_parameter_groups
from .streaming import StreamLoader

logger = get_logger(__name__)

# The EMA warms up (its decay ramps to --ema_decay as 1 - (1 + step) ** -power), so short runs get a usable average.
EMA_WARMUP_POWER = 3 / 4
# Total batch size at which --scale_lr leaves the learning rate unchanged (VAR / MAR convention).
SCALE_LR_REFERENCE_BATCH = 256
DEEPSPEED_REFUSAL = (
    "DeepSpeed is not supported by the spectralar_hf training scripts: they keep an EMA of the weights outside the "
    "engine, and the GAN scripts prepare a second model and optimizer (the discriminator), which accelerate's "
    "DeepSpeed integration does not combine with one engine per model; launch with FSDP instead (accelerate launch "
    "--config_file examples/accelerate_fsdp.yaml) or with DDP (--multi_gpu).")


def deepspeed_requested() -> bool:
    """Whether `accelerate launch --use_deepspeed` (or a DeepSpeed config) started this process."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


# --report_to names -> the package each tracker needs (accelerate skips a missing one with a warning only).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "aim": "aim",
                    "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


def check_trackers(report_to: str) -> list[str] | None:
    """The trackers of `--report_to` ("none", "all", or comma-separated names) for `Accelerator(log_with=...)`;
    an unknown name or a tracker whose package is not installed is a `ValueError` naming the fix (accelerate would
    train on without logging after a warning). "all": the installed ones."""
    from accelerate.utils import imports

    def installed(name: str) -> bool:
        return getattr(imports, f"is_{name}_available")()

    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if names in ([], ["none"]):
        return None
    if names == ["all"]:
        return [name for name in TRACKER_PACKAGES if installed(name)]
    unknown = [name for name in names if name not in TRACKER_PACKAGES]
    if unknown:
        raise ValueError(f"--report_to {','.join(unknown)}: unknown tracker; use none, all or any of "
                         f"{', '.join(TRACKER_PACKAGES)}.")
    missing = [name for name in names if not installed(name)]
    if missing:
        packages = " ".join(TRACKER_PACKAGES[name] for name in missing)
        raise ValueError(f"--report_to {','.join(missing)}: not installed, so the run would not be logged; "
                         f"pip install {packages}, or pass --report_to none.")
    return names


def enable_gradient_checkpointing(network: torch.nn.Module) -> None:
    """Recompute the activations of `network`'s blocks in the backward pass (transformers' and diffusers' own
    switches; non-reentrant checkpoints, so gradients are the same as without)."""
    if getattr(network, "supports_gradient_checkpointing", False):  # transformers PreTrainedModel
        if hasattr(network, "activation_checkpointing_enable"):  # its name in recent transformers 5 releases
            network.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif getattr(network, "_supports_gradient_checkpointing", False):  # diffusers ModelMixin
        network.enable_gradient_checkpointing()
    else:
        raise ValueError(f"--gradient_checkpointing: {type(network).__name__} does not support gradient "
                         f"checkpointing; train without the flag.")


def allow_tf32() -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and later): torch's `fp32_precision = "tf32"`
    settings (the older `allow_tf32` flags where torch predates them; the two APIs must not be mixed)."""
    if hasattr(torch.backends.cudnn, "conv"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def fsdp_version(accelerator: Accelerator) -> int:
    """1 or 2: the FSDP implementation accelerate's plugin uses."""
    return int(getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) or 1)


def _full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective: every rank calls it); any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _clean_name(name: str) -> str:
    """A module path without the wrapper segments of FSDP1 / activation checkpointing / torch.compile."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module")


def full_state_dict(model: torch.nn.Module, root: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The unsharded state dict of `model` (plain, DDP-, FSDP1- or FSDP2-wrapped) on the CPU. With `root`, `model` is
    a submodule of the wrapped `root` (e.g. the VAE inside its loss wrapper) and the keys are relative to it. A
    collective under FSDP: every rank calls it; the main process (rank 0) gets the weights, the others an empty
    dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    root = model if root is None else root
    if isinstance(root, torch.nn.parallel.DistributedDataParallel):
        root = root.module
    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state = {name: _full_tensor(value).detach().cpu() for name, value in state.items()}
    if model is not root:
        path = next(_clean_name(name) for name, module in root.named_modules() if module is model)
        prefix = f"{path}." if path else ""
        state = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
    return state


def build_from_config(model_cls: type, config: Any) -> torch.nn.Module:
    """A freshly initialised `model_cls` of `config`: transformers models take the config object, diffusers models
    (`ModelMixin`, e.g. `AutoencoderKL`) go through `from_config`."""
    from diffusers import ModelMixin

    if issubclass(model_cls, ModelMixin):
        return model_cls.from_config(config)
    return model_cls(config)


def full_ema_parameters(ema: EMAModel) -> list[torch.Tensor]:
    """The EMA's shadow parameters unsharded, on the CPU (a collective when they are DTensors)."""
    return [_full_tensor(p).detach().cpu() for p in ema.shadow_params]


def save_image(accelerator: Accelerator, image, output_dir: str | Path, tag: str, step: int) -> Path:
    """Write a validation picture (a PIL image) to `output_dir/samples/{tag}-{step:07d}.png` and log it to every
    tracker that takes images: TensorBoard (`add_image`) and any other whose accelerate tracker has `log_images`
    (wandb, ...). Returns the file written."""
    import numpy as np

    folder = Path(output_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{tag}-{step:07d}.png"
    image.save(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({tag: [image]}, step=step)
    return path


def run_script(main: Callable[[], Any], script: str) -> None:
    """A training script's `__main__`: run `main()`; a multi-process run's rank leaves in `end_run` (no teardown to
    hang); bad input, a missing file or package ends in one line `NAME: error: ...` and exit status 2."""
    import sys

    from .checkpointing import exit_after_distributed_run
    from .finite import close_progress_bars

    try:
        exit_after_distributed_run()
        main()
    except (ValueError, OSError, ImportError) as error:
        close_progress_bars()  # a diverged run stops mid-bar: the error gets a line of its own
        print(f"{Path(script).name}: error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)


class GatheredEMAState:
    """The checkpoint state of an EMA over FSDP2 shards, independent of the sharding: `state_dict` gathers the full
    EMA weights (a collective; accelerate calls it on every rank and writes the main process's), `load_state_dict`
    puts each rank's shard of them back into the EMA. (Registered directly, the EMA would save the main process's
    shards only, and every rank would load them.)"""

    def __init__(self, ema: EMAModel):
        self.ema = ema

    def state_dict(self) -> dict:
        state = self.ema.state_dict()
        state["shadow_params"] = full_ema_parameters(self.ema)
        return state

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.tensor import distribute_tensor

        state = dict(state)
        shards = []
        for value, current in zip(state["shadow_params"], self.ema.shadow_params):
            if hasattr(current, "device_mesh"):
                value = distribute_tensor(value.to(current.device, current.dtype), current.device_mesh,
                                          current.placements)
            shards.append(value)
        state["shadow_params"] = shards
        self.ema.load_state_dict(state)


class TrainingRun:
    """The accelerator and run state of one training script run (see the module docstring for the loop).

    Args:
        args: the parsed arguments of `add_optimization_arguments` and `add_run_arguments` (`output_dir`,
            `resume_from_checkpoint`, `max_train_steps`, `logging_steps`, `checkpointing_steps`, ...).
        name: the script's name without `.py` (tracker project, `run_info.json`).
        outputs: the final outputs of the script in `output_dir` (what `--overwrite_output_dir` deletes).
        progress_name: the progress bar's label.
    """

    def __init__(self, args, name: str, outputs: tuple[str, ...], progress_name: str | None = None):
        self.args = args
        self.name = name
        self.progress_name = progress_name or name
        self.output_dir = Path(args.output_dir)
        if deepspeed_requested():
            raise ValueError(DEEPSPEED_REFUSAL)
        # before anything is written: an earlier run in output_dir is resumed, deleted (--overwrite_output_dir) or kept
        self.plan = plan_run(self.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, outputs,
                             args.logging_dir)
        trackers = check_trackers(args.report_to)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=trackers,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / args.logging_dir)),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(DEEPSPEED_REFUSAL)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
        check_mixed_precision(self.accelerator)  # fp16 on CPU would train in float32 and record fp16
        if getattr(args, "allow_tf32", False):
            if self.accelerator.device.type != "cuda":
                logger.warning("--allow_tf32 has no effect on a CPU (TF32 is a CUDA matmul mode)")
            allow_tf32()
        self.reseed()
        self.ema: EMAModel | None = None
        self.config_record: dict | None = None
        self.data = DataProgress()  # micro-batches consumed: where a resumed run continues in the data
        self.global_step = 0
        self.progress = None
        self.model_cls: type | None = None
        self._ema_module: Callable[[torch.nn.Module], torch.nn.Module] = lambda model: model

    # --- set-up ---------------------------------------------------------------------------------------------------

    def reseed(self) -> None:
        """Seed every generator with --seed (per process, as accelerate's `device_specific`): the run's random draws
        then do not depend on what building the models or loading the data drew before."""
        set_seed(self.args.seed, device_specific=True)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def learning_rate(self) -> float:
        """--learning_rate, times total batch / 256 with --scale_lr."""
        args = self.args
        total_batch = args.train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps
        return (args.learning_rate * total_batch / SCALE_LR_REFERENCE_BATCH if args.scale_lr
                else args.learning_rate)

    def optimizer_and_scheduler(self, model: torch.nn.Module, **decay_options: Any):
        """AdamW over `model`'s parameters (no weight decay on biases, norms and embeddings:
        `decay_parameter_groups(model, ..., **decay_options)`) and the --lr_scheduler schedule."""
        args = self.args
        optimizer = torch.optim.AdamW(decay_parameter_groups(model, args.adam_weight_decay, **decay_options),
                                      lr=self.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon)
        processes = self.accelerator.num_processes
        scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * processes,
                                  num_training_steps=args.max_train_steps * processes)
        return optimizer, scheduler

    def prepare(self, model, optimizer, loader, scheduler, *, config_record: dict, model_cls: type,
                ema_module: Callable | None = None, extra_models: Iterable = (), states: Iterable = ()):
        """`accelerator.prepare` the training objects (and `extra_models`, e.g. a discriminator and its optimizer),
        build the EMA (with --use_ema) from the prepared parameters, register `states`, the EMA and the data
        position for checkpoints (in that order), resume from the planned checkpoint and start the run. `model_cls` is
        the class of the trained network, which the EMA and `full_model` rebuild: `ema_module(model)` (default
        `model` itself; e.g. `lambda m: unwrap(m).vae`, the VAE inside its loss wrapper; it is called with the model
        before and after `accelerator.prepare`, so it should unwrap). Returns the prepared `model, optimizer, loader,
        scheduler` followed by the prepared `extra_models`."""
        accelerator = self.accelerator
        if getattr(self.args, "gradient_checkpointing", False):
            enable_gradient_checkpointing((ema_module or (lambda network: network))(model))
        prepared = accelerator.prepare(model, optimizer, loader, scheduler)
        extra = accelerator.prepare(*extra_models) if extra_models else ()
        extra = extra if isinstance(extra, tuple) else (extra,)
        self.model_cls = model_cls
        if ema_module is not None:
            self._ema_module = ema_module
        for state in states:
            accelerator.register_for_checkpointing(state)
        if self.args.use_ema and is_sharded(accelerator) and fsdp_version(accelerator) == 1:
            raise ValueError("--use_ema under FSDP1 is not supported: FSDP1 flattens the weights into per-rank shards "
                             "that an EMA cannot gather back; use FSDP2 (fsdp_version: 2 in the accelerate config, as "
                             "examples/accelerate_fsdp.yaml) or train without --use_ema.")
        if self.args.use_ema:
            # After prepare: under FSDP the EMA shadows the sharded parameters (a model built before would not match).
            module = self._ema_module(prepared[0])
            config = accelerator.unwrap_model(module).config  # transformers config or diffusers FrozenDict
            self.ema = EMAModel(module.parameters(), decay=self.args.ema_decay, use_ema_warmup=True,
                                power=EMA_WARMUP_POWER, model_cls=model_cls,
                                model_config=config.to_dict() if hasattr(config, "to_dict") else dict(config))
            self.ema.to(accelerator.device)
            accelerator.register_for_checkpointing(GatheredEMAState(self.ema) if is_sharded(accelerator) else self.ema)
        if isinstance(prepared[2], StreamLoader):  # its position is saved per rank (accelerate leaves it alone)
            self.data.stream = prepared[2]
            self.data.rank, self.data.world_size = accelerator.process_index, accelerator.num_processes
        accelerator.register_for_checkpointing(self.data)
        self.config_record = config_record
        # the checkpoint is checked before run_info.json is (re)written
        self.global_step = resume(accelerator, self.plan.checkpoint, config_record, self.output_dir)
        if self.global_step:  # before start_run rewrites run_info.json, which records the saving run's arguments
            for warning in schedule_changes(self.plan.checkpoint, self.args, prepared[3].scheduler.base_lrs,
                                            self.learning_rate):
                logger.warning(warning, main_process_only=True)
        start_run(accelerator, self.output_dir, self.args, self.name, self.plan.stale, config_record)
        if self.global_step:
            logger.info(f"Resumed at step {self.global_step}")
        return (*prepared, *extra)

    # --- the loop -------------------------------------------------------------------------------------------------

    def batches(self, loader, *epoch_datasets) -> Iterator[Any]:
        """The micro-batches of the run, from where a resumed run stopped, until --max_train_steps. `set_epoch` is
        called on the loader and on `epoch_datasets` (e.g. augmentations seeded per epoch) at each epoch start."""
        args = self.args
        self.progress = tqdm(range(args.max_train_steps), initial=self.global_step, desc=self.progress_name,
                             disable=not self.accelerator.is_local_main_process)
        if isinstance(loader, StreamLoader):
            yield from self._stream_batches(loader)
            return
        while self.global_step < args.max_train_steps:
            # not global_step * accumulation: accelerate also steps at every epoch end (see DataProgress)
            epoch, skip = divmod(self.data.micro_step, len(loader))
            loader.set_epoch(epoch)
            for dataset in epoch_datasets:
                dataset.set_epoch(epoch)
            for batch in self.accelerator.skip_first_batches(loader, skip) if skip else loader:
                yield batch
                if self.global_step >= args.max_train_steps:
                    return

    def _stream_batches(self, stream: StreamLoader) -> Iterator[Any]:
        """`batches` of a `StreamLoader`: on the device, its position recorded as each batch is handed out, and every
        epoch ended on all ranks as soon as one rank's stream ends (so that all take the same steps)."""
        accelerator = self.accelerator
        while self.global_step < self.args.max_train_steps:
            epoch = iter(stream)
            while True:
                item = next(epoch, None)
                if accelerator.num_processes > 1:
                    have = torch.tensor([item is not None], dtype=torch.long, device=accelerator.device)
                    if int(accelerator.gather(have).min()) == 0:
                        break
                elif item is None:
                    break
                batch, marker = item
                stream.consume(marker)
                yield send_to_device(batch, accelerator.device)
                if self.global_step >= self.args.max_train_steps:
                    epoch.close()
                    return
            epoch.close()
            if stream.position.batches == 0:
                raise ValueError(f"Epoch {stream.position.epoch} of the stream gave no full batch of "
                                 f"{stream.batch_size} images on every process; lower --train_batch_size, use fewer "
                                 f"processes or add data.")
            stream.position.next_epoch()

    def check_finite(self, terms: Mapping[str, Any]) -> None:
        """Stop every rank at a non-finite loss term, before the update (`finite.check_finite_loss`)."""
        check_finite_loss(self.accelerator, self.global_step + 1, terms)

    def backward_and_step(self, loss: torch.Tensor, model, optimizer, scheduler=None) -> None:
        """Backward, gradient clipping at --max_grad_norm on sync steps, optimizer (and schedule) step, zero_grad."""
        accelerator = self.accelerator
        accelerator.backward(loss)
        if accelerator.sync_gradients and self.args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def sync_step(self) -> bool:
        """Count the micro-batch just trained; True when it completed an optimizer step (the step counter moves)."""
        self.data.micro_step += 1
        if not self.accelerator.sync_gradients:
            return False
        self.global_step += 1
        self.progress.update(1)
        return True

    def end_step(self, model, logs: Mapping[str, Any] | Callable[[], Mapping[str, Any]], scheduler=None) -> None:
        """After an optimizer step: the EMA step, the logs (a dict or a function giving one, called only at
        --logging_steps and the last step; `loss` shows on the progress bar) with the learning rate, and a
        checkpoint at --checkpointing_steps."""
        args, step = self.args, self.global_step
        if self.ema is not None:
            self.ema.step(self._ema_module(model).parameters())
        if step % args.logging_steps == 0 or step == args.max_train_steps:
            record = dict(logs() if callable(logs) else logs)
            if scheduler is not None:
                record["lr"] = scheduler.get_last_lr()[0]
            if "loss" in record:
                self.progress.set_postfix(loss=f"{record['loss']:.4f}")
            self.accelerator.log(record, step=step)
            if self.is_main_process:
                append_jsonl(self.output_dir / "train_log.jsonl", {"step": step, **record})
        if step % args.checkpointing_steps == 0:
            if self.data.stream is not None:
                self.data.gather_stream(self.accelerator)  # every rank's position goes into the checkpoint
            save_checkpoint(self.accelerator, self.output_dir, step, args.checkpoints_total_limit, self.config_record)

    @property
    def validation_due(self) -> bool:
        return self.global_step % self.args.validation_steps == 0

    # --- full weights -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def full_model(self, model, final: bool = False, use_ema: bool = True) -> Iterator[torch.nn.Module | None]:
        """The trained network (`ema_module` of `model`), unsharded, with the EMA weights when --use_ema and
        `use_ema`, in eval mode, on the main process (None elsewhere). Every rank must enter it: under FSDP it
        gathers the shards. Without FSDP it is the unwrapped network itself with the EMA weights swapped in and, unless
        `final`, swapped back (and its training mode restored) on exit."""
        accelerator = self.accelerator
        module = self._ema_module(model)
        ema = self.ema if use_ema else None
        if final:
            accelerator.wait_for_everyone()
            check_finite_state(accelerator, self.global_step)  # a diverged model is not saved
        if is_sharded(accelerator):
            state = full_state_dict(module, root=model)  # a submodule's keys come from the wrapped root (FSDP1)
            averaged = full_ema_parameters(ema) if ema is not None else None
            network = None
            if self.is_main_process:
                network = build_from_config(self.model_cls, accelerator.unwrap_model(module).config)
                network.load_state_dict(state)
                if averaged is not None:
                    for parameter, value in zip(network.parameters(), averaged):
                        parameter.data.copy_(value)
                network.to(accelerator.device).eval()
            yield network
            return
        network = accelerator.unwrap_model(module)
        if not self.is_main_process:
            yield None
            return
        was_training = network.training
        if ema is not None:
            if not final:
                ema.store(network.parameters())
            ema.copy_to(network.parameters())
        network.eval()
        try:
            yield network
        finally:
            if not final:
                if ema is not None:
                    ema.restore(network.parameters())
                network.train(was_training)

    def end(self) -> None:
        """End the run (trackers, the process group; see `checkpointing.end_run`)."""
        end_run(self.accelerator)
