"""The training loop: `train(config, on_event, should_stop)`, read top to bottom.

    result = train(load_config("run.toml"), on_event=print, should_stop=lambda: False)
    result.outputs   # [<name>.safetensors, <name>.peft.safetensors, config.toml]

The CLI, the job runner and the tests all call this one function. It runs as one process or, under
`accelerate launch`, as one of many; only the main process writes files and sends events.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from trainer import checkpoint as ckpt
from trainer import distributed as dist
from trainer import prior, tracking
from trainer import validation as val
from trainer.config import TrainConfig, save_config, validate
from trainer.data import check_dataset
from trainer.ema import LoraEMA, ema_metadata, keep_average, swapped_in
from trainer.errors import StudioError, TrainingError
from trainer.events import CheckpointSaved, Done, Event, Failed, Progress, SampleSaved, Started
from trainer.examples import TrainBatch, captions_are_static
from trainer.export import export_lora
from trainer.lora_attention import install_fused_attention
from trainer.models import load_base
from trainer.models.quantize import check_available as check_quantize_available
from trainer.models.quantize import quantize_unet
from trainer.network import add_lora, trainable_parameters
from trainer.network_types import RankBudget
from trainer.optimizers import build_optimizer, check_available, evaluating
from trainer.precision import choose_mixed_precision, place_weights, weight_dtype
from trainer.samples import render_samples
from trainer.state_hooks import register_lora_state_hooks

NAN_ADVICE = ("Lower optim.learning_rate (try half), keep optim.max_grad_norm at 1, and on a GPU prefer "
              "train.mixed_precision = 'bf16' over 'fp16'. Resume from the last checkpoint after changing it.")


def nan_advice(config: TrainConfig, mixed_precision: str, step: int) -> str:
    """What to change after a NaN or infinite loss; the learning rate is blamed only when it can be the cause.

    The loss of the first optimizer step is computed before any update, so a learning rate cannot have made it
    NaN: then the cause is a setting (fp16 overflow, a huge noise offset) or the data, and the advice says so.
    """
    if step > 1:
        return NAN_ADVICE
    causes = []
    if mixed_precision == "fp16":
        causes.append("train.mixed_precision = 'fp16' overflows in some models: use 'bf16' (or 'no')")
    if config.train.noise_offset > 0.2:
        causes.append(f"train.noise_offset = {config.train.noise_offset} is large: try 0.05")
    causes.append("check the images with `lora-studio doctor` and the base model with a plain preview")
    return ("The loss was not finite before any weight update, so the learning rate is not the cause: "
            + "; ".join(causes) + ".")


@dataclass
class Result:
    outputs: list[Path]
    step: int
    final_loss: float
    stopped: bool = False
    losses: list[float] = field(default_factory=list)
    best_step: int = 0
    """The step with the lowest validation loss (0 without validation); `early_stopped`: patience ran out."""
    early_stopped: bool = False


def train(config: TrainConfig, on_event: Callable[[Event], None] | None = None,
          should_stop: Callable[[], bool] | None = None, resume_from: str | Path | None = None,
          workdir: str | Path | None = None) -> Result:
    """Train a LoRA as `config` says; events go to `on_event`, `should_stop()` is polled once per step."""
    validate(config)
    should_stop = should_stop or (lambda: False)
    workdir = Path(workdir or config.export.output_dir)
    # accelerate keeps precision and accumulation settings in process-wide singletons; a second train() in
    # one process (tests, notebooks, the API) may ask for others. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=choose_mixed_precision(config.train.mixed_precision),
                              gradient_accumulation_steps=config.train.gradient_accumulation_steps,
                              **dist.accelerator_kwargs(find_unused_parameters=config.network.train_text_encoder),
                              **tracking.tracker_kwargs(config, workdir))
    dist.check_world(accelerator)
    # The world size is what accelerate launched, whatever the file said: it is saved and checked on resume.
    config = dist.with_world_size(config, accelerator.num_processes)

    def emit(event: Event) -> None:
        if on_event is not None and accelerator.is_main_process:
            on_event(event)

    try:
        return _train(config, accelerator, emit, should_stop, resume_from, workdir)
    except StudioError as err:
        emit(Failed(error=str(err), advice=err.fix or ""))
        raise
    except torch.cuda.OutOfMemoryError as err:
        from trainer.estimate.oom import out_of_memory_error

        # The step's tensors go with the traceback's frames; the advice is the estimate and what would fit.
        err.__traceback__ = None
        failure = out_of_memory_error(config, accelerator.device)
        emit(Failed(error=str(failure), advice=failure.fix or "", suggested=failure.settings,
                    memory=failure.estimate))
        raise failure from err


def _train(config, accelerator, emit, should_stop, resume_from, workdir) -> Result:
    cfg = config.train
    check_available(config, accelerator.device)  # an optimizer this machine cannot run (adamw8bit on a CPU)
    # Check the data before any model loads: the doctor's errors stop the run here, with its report.
    items, report = check_dataset(config)
    items, held_out = val.split_items(items, config)
    # Likewise a checkpoint this config cannot resume (another world size, another rank…).
    resume_at = ckpt.resolve_resume(resume_from) if resume_from is not None else None
    if resume_at is not None:
        ckpt.check_resumable(resume_at, config)
    set_seed(cfg.seed)

    # The frozen base model with trainable LoRA layers, in the family's component order (the UNet, then its
    # text encoders): the order of the optimizer's groups, of the wrapped models and of the checkpoint files.
    check_quantize_available(config.model.quantize)
    base = load_base(config.model)
    resolution = config.data.resolution or base.default_resolution
    frozen_dtype = weight_dtype(accelerator.mixed_precision)
    quantize_unet(base, config.model.quantize, frozen_dtype)  # packed into 4 bits as it moves to the device
    lora_configs = add_lora(base, config.network, cfg.steps)
    budget = RankBudget.for_run(base, lora_configs)  # AdaLoRA only: its rank allocation each step
    params = trainable_parameters(base, config.network)
    place_weights(base, params, accelerator.device, accelerator.mixed_precision)
    pipe = base.pipe
    fused_attention = 0  # a CPU step is bound by per-op overhead: fewer, larger projections
    if accelerator.device.type == "cpu" and config.network.type == "lora":
        fused_attention = install_fused_attention(pipe.unet)
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()

    # Latents and (static) captions are encoded once, so each step runs only the UNet.
    cache_text = captions_are_static(config.data) and not config.network.train_text_encoder
    # Prior preservation: class images (a folder, or drawn once by the base model and cached) join the epochs.
    class_items = prior.class_items_for_run(config, base, resolution, accelerator, workdir, report, emit)
    examples = prior.example_set(base, items, class_items, config, resolution, accelerator.device, frozen_dtype,
                                 cache_text)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    state = ckpt.read_state(resume_at) if resume_at is not None else None
    validator = val.Validator.build(base, held_out, config, resolution, accelerator.device, frozen_dtype,
                                    noise_scheduler, state)
    # From here the VAE only decodes samples: in the compute dtype, which the pipelines upcast where needed.
    pipe.vae.to(dtype=frozen_dtype)

    # Optimizer, LR schedule, and every trained model wrapped by accelerate (DDP all-reduces their gradients).
    optimizer, lr_scheduler = build_optimizer(params, config, accelerator.num_processes)
    register_lora_state_hooks(accelerator, base, lora_configs)
    if budget is not None:
        accelerator.register_for_checkpointing(budget)
    models, optimizer, lr_scheduler = prepare_models(accelerator, base, params, optimizer, lr_scheduler)
    unet = models["unet"]
    text_fn = trainable_text_fn(base, models) if config.network.train_text_encoder else None
    ema = LoraEMA.build(accelerator, base, params, config)  # None when off; before resuming, which loads it

    # Resume: the newest complete checkpoint restores weights, optimizer, schedule, RNG and data position.
    step, micro_step = 0, 0
    if resume_at is not None:
        state = ckpt.load_checkpoint(accelerator, resume_at, config)
        step, micro_step = state.step, state.micro_step
    optimizer.train()  # schedule-free optimizers step in train mode (checkpoints hold eval mode); others: no-op

    if accelerator.is_main_process:
        Path(config.export.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(config, Path(config.export.output_dir) / "config.toml")
    tracking.start_tracking(accelerator, config)
    emit(Started(total_steps=cfg.steps, start_step=step, device=str(accelerator.device),
                 mixed_precision=accelerator.mixed_precision, cached_text=cache_text, cached_latents=True,
                 num_images=len(items), skipped=[str(p) for p in report.skipped],
                 num_processes=accelerator.num_processes, num_validation=len(validator or []),
                 fused_attention=fused_attention,
                 log_dir=tracking.run_log_dir(accelerator, config)))

    # The loop: one optimizer step per pass (after gradient accumulation), events, samples, checkpoints.
    world, rank = accelerator.num_processes, accelerator.process_index
    epoch_cache: dict = {}
    export_best = _best_exporter(base, lora_configs, config)
    losses: list[float] = []
    window: list[float] = []
    started, start_step, stopped, early_stopped = time.perf_counter(), step, False, False
    while step < cfg.steps:
        # One global batch per micro-step, shared out over the ranks; noise is keyed by place in the global
        # batch, so N processes × batch B train exactly like 1 process × batch N·B.
        epoch, batches = _batches_at(examples, micro_step, cfg, world, epoch_cache)
        global_ids = batches[micro_step % len(batches)]
        positions = range(rank, len(global_ids), world)
        generators = dist.sample_generators(cfg.seed, micro_step, positions)
        rng = np.random.default_rng([cfg.seed, micro_step, rank])
        with accelerator.accumulate(*models.values()):
            batch = examples.batch([global_ids[p] for p in positions], rng, text_fn, generators)
            loss = training_step(unet, noise_scheduler, base, batch, config, generators)
            accelerator.backward(loss + budget.penalty() if budget is not None else loss)
            if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_([p for g in params.values() for p in g], config.optim.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            if budget is not None and accelerator.sync_gradients:
                budget.update(step + 1)
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        window.append(accelerator.gather(loss.detach()).mean().item())
        if not accelerator.sync_gradients:
            continue
        step += 1
        if ema is not None:
            ema.update()
        step_loss = sum(window) / len(window)
        window.clear()
        if not math.isfinite(step_loss):
            raise TrainingError(f"loss became {step_loss} at step {step}",
                                fix=nan_advice(config, accelerator.mixed_precision, step))
        losses.append(step_loss)
        rate = (step - start_step) / max(time.perf_counter() - started, 1e-9)
        lr = lr_scheduler.get_last_lr()[0]
        emit(Progress(step=step, total_steps=cfg.steps, loss=step_loss, lr=lr,
                      it_per_s=rate, eta_s=(cfg.steps - step) / max(rate, 1e-9), epoch=epoch))
        tracking.log_progress(accelerator, step, step_loss, lr, rate)

        stopped = step < cfg.steps and dist.agree_to_stop(accelerator, should_stop())
        validate_now = validator is not None and validator.due(step)
        sample_now = config.sample.every_n_steps and (step % config.sample.every_n_steps == 0 or step == cfg.steps)
        save_now = stopped or (cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps)
        # Schedule-free optimizers are scored, sampled and saved at their averaged weights (see `evaluating`).
        with evaluating(optimizer, when=bool(validate_now or sample_now or save_now)):
            if validate_now:
                with swapped_in(ema):  # with EMA on, the average is what is scored, kept as best, sampled, exported
                    early_stopped = validator.check(accelerator, unet, step, emit, export_best) and step < cfg.steps
            if sample_now:
                with swapped_in(ema):
                    _samples(accelerator, base, config, examples, workdir, step, resolution, emit)
            if save_now:
                _checkpoint(accelerator, workdir, config, step, micro_step, epoch, emit, validator)
        if stopped or early_stopped:
            break

    # Export the LoRA in both key formats (and the config beside it) from the main process only.
    optimizer.eval()  # schedule-free: the averaged weights are the LoRA; a no-op for the other optimizers
    accelerator.wait_for_everyone()
    keep_average(ema)
    dist.write_rank_report(accelerator, _lora_state(base, lora_configs), losses)
    outputs: list[Path] = []
    tracker = validator.tracker if validator is not None else val.BestTracker()
    if accelerator.is_main_process:
        outputs = _export(base, lora_configs, config, step, tracker.best_step, tracker.best_loss)
        outputs += val.best_paths(config) + [Path(config.export.output_dir) / "config.toml"]
    emit(Done(step=step, outputs=[str(p) for p in outputs], stopped=stopped, best_step=tracker.best_step,
              best_loss=tracker.best_loss, early_stopped=early_stopped))
    accelerator.end_training()
    return Result(outputs, step, losses[-1] if losses else float("nan"), stopped, losses, tracker.best_step,
                  early_stopped)


def training_step(unet, noise_scheduler, base, batch: TrainBatch, config: TrainConfig,
                  generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Noise the latents at random timesteps and score the UNet's prediction of the target.

    `generators` (one per example) draw the noise and timesteps; without them the global RNG does.
    """
    latents, text, sizes = batch.latents, batch.text, batch.sizes
    noise, offset, timesteps = _draw_noise(latents, noise_scheduler.config.num_train_timesteps, generators)
    if config.train.noise_offset:
        noise = noise + config.train.noise_offset * offset
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if base.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    unet_dtype = next(p.dtype for p in unet.parameters() if not p.requires_grad)
    kwargs = base.family.unet_kwargs({k: v.to(unet_dtype) for k, v in text.items()}, sizes)
    prediction = unet(noisy.to(unet_dtype), timesteps, **kwargs).sample
    loss = per_example_loss(F.mse_loss(prediction.float(), target.float(), reduction="none"), batch)
    if config.train.min_snr_gamma:
        loss = loss * min_snr_weight(compute_snr(noise_scheduler, timesteps), config.train.min_snr_gamma,
                                     base.prediction_type)
    if batch.weight is not None:
        loss = loss * batch.weight.to(loss.device, loss.dtype)
    return loss.mean()


def per_example_loss(squared_error: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
    """Each example's mean squared error; with a loss mask, the mask-weighted mean over its latent pixels."""
    if batch.mask is None:
        return squared_error.mean(dim=(1, 2, 3))
    mask = batch.mask.to(squared_error.device, squared_error.dtype)
    weighted = (squared_error * mask).sum(dim=(1, 2, 3))
    return weighted / (mask.sum(dim=(1, 2, 3)) * squared_error.shape[1]).clamp_min(1e-8)


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v.

    With zero terminal SNR (`model.zero_terminal_snr`) the last timestep has SNR 0, and 0/0 would make the
    loss NaN; there the epsilon weight is 1, its limit as SNR -> 0, as diffusers' training scripts set it
    (`mse_loss_weights[snr == 0] = 1.0`). The v-prediction weight is finite at SNR 0 as it is.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return torch.where(snr == 0, torch.ones_like(snr), clipped / snr)


def _draw_noise(latents, num_timesteps: int, generators):
    shape, device = latents.shape, latents.device
    if generators is None:
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, num_timesteps, (shape[0],), device=device).long()
        return noise, torch.randn(shape[0], shape[1], 1, 1, device=device), timesteps
    noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generators])
    timesteps = torch.cat([torch.randint(0, num_timesteps, (1,), generator=g) for g in generators])
    offset = torch.stack([torch.randn(shape[1], 1, 1, generator=g) for g in generators])
    return noise.to(device, latents.dtype), offset.to(device, latents.dtype), timesteps.to(device).long()


def _batches_at(examples, micro_step, cfg, world, cache) -> tuple[int, list[list[int]]]:
    """The epoch's global batches (`world` × batch_size each); a global batch too small to give every rank an
    example (the tail of a bucket) is skipped, as every rank must run each step."""
    def global_batches(epoch):
        return [b for b in examples.epoch_batches(epoch, cfg.batch_size * world, cfg.seed) if len(b) >= world]

    if "per_epoch" not in cache:
        cache["per_epoch"] = len(global_batches(0))
    per_epoch = cache["per_epoch"]
    if per_epoch == 0:
        raise TrainingError(f"has fewer images ({len(examples)} samples) than processes ({world})",
                            where="dataset", fix="Add images or lower train.num_processes.")
    epoch = micro_step // per_epoch
    if cache.get("epoch") != epoch:
        cache.update(epoch=epoch, batches=global_batches(epoch))
    return epoch, cache["batches"]


def prepare_models(accelerator, base, params, optimizer, lr_scheduler):
    """The trained components (`params`' keys) as accelerate wraps them, in train mode (so `network.dropout`
    applies to text encoders too), with the prepared optimizer and schedule."""
    names = list(params)
    prepared = accelerator.prepare(*(getattr(base.pipe, n) for n in names), optimizer, lr_scheduler)
    models = dict(zip(names, prepared[:len(names)], strict=True))
    for model in models.values():
        model.train()
    return models, prepared[-2], prepared[-1]


def trainable_text_fn(base, models):
    """Captions to conditioning through the wrapped text encoders: their forward is what DDP synchronises."""
    encoders = [models[name] for name in base.family.text_encoder_names]
    return lambda captions: base.family.encode_text_trainable(base.pipe, captions, encoders)


def _samples(accelerator, base, config, examples, workdir, step, resolution, emit) -> None:
    if not accelerator.is_main_process:
        return
    prompts = config.sample.prompts or [examples.examples[0].caption]
    modules = [getattr(base.pipe, name) for name in ("unet", *base.family.text_encoder_names)]
    was_training = [m.training for m in modules]
    for module in modules:
        module.eval()
    paths = render_samples(base.pipe, prompts, Path(workdir) / "samples" / f"step-{step}",
                           negative_prompt=config.sample.negative_prompt, seed=config.sample.seed,
                           steps=config.sample.steps, guidance=config.sample.guidance,
                           width=resolution, height=resolution)
    for module, mode in zip(modules, was_training, strict=True):
        module.train(mode)
    tracking.log_samples(accelerator, step, paths)
    emit(SampleSaved(step=step, paths=[str(p) for p in paths], prompts=prompts))


def _export(base, lora_configs, config, step, best_step=0, best_loss=None, as_best=False) -> list[Path]:
    """The LoRA files at `step` (`as_best`: as `<name>.best.*`); with validation on, the best step and its
    validation loss go in the metadata (`ss_best_step`)."""
    meta = {"ss_best_step": str(best_step), "lora_studio_best_validation_loss": repr(best_loss)} \
        if best_step else None
    return export_lora(base, lora_configs, config, step, name=val.best_name(config) if as_best else None,
                       extra_metadata={**(meta or {}), **ema_metadata(config)})


def _best_exporter(base, lora_configs, config) -> Callable[[int, float], list[Path]]:
    """`export(step, loss)`: the LoRA as it is now, written as the best step's `<name>.best.*` files."""
    return lambda step, loss: _export(base, lora_configs, config, step, step, loss, as_best=True)


def _checkpoint(accelerator, workdir, config, step, micro_step, epoch, emit, validator=None) -> None:
    # Every rank takes part (accelerate saves each rank's RNG state); the main process renames and marks it.
    best = validator.tracker.state() if validator is not None else {}
    state = ckpt.TrainerState(step=step, micro_step=micro_step, epoch=epoch, config=config.to_dict(), **best)
    path = ckpt.save_checkpoint(accelerator, workdir, state, config.train.keep_last)
    emit(CheckpointSaved(step=step, path=str(path)))


def _lora_state(base, lora_configs) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    from trainer.network import ADAPTER

    return {f"{name}.{key}": value for name in lora_configs
            for key, value in get_peft_model_state_dict(getattr(base.pipe, name), adapter_name=ADAPTER).items()}
