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
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, save_config, validate
from trainer.data import scan_dataset
from trainer.errors import StudioError, TrainingError
from trainer.events import CheckpointSaved, Done, Event, Failed, Progress, SampleSaved, Started
from trainer.examples import ExampleSet, captions_are_static
from trainer.export import export_lora
from trainer.models import load_base
from trainer.network import add_lora, trainable_parameters
from trainer.precision import choose_mixed_precision, weight_dtype
from trainer.samples import render_samples
from trainer.state_hooks import register_lora_state_hooks

NAN_ADVICE = ("Lower optim.learning_rate (try half), keep optim.max_grad_norm at 1, and on a GPU prefer "
              "train.mixed_precision = 'bf16' over 'fp16'. Resume from the last checkpoint after changing it.")


@dataclass
class Result:
    outputs: list[Path]
    step: int
    final_loss: float
    stopped: bool = False
    losses: list[float] = field(default_factory=list)


def train(config: TrainConfig, on_event: Callable[[Event], None] | None = None,
          should_stop: Callable[[], bool] | None = None, resume_from: str | Path | None = None,
          workdir: str | Path | None = None) -> Result:
    """Train a LoRA as `config` says; events go to `on_event`, `should_stop()` is polled once per step."""
    validate(config)
    should_stop = should_stop or (lambda: False)
    workdir = Path(workdir or config.export.output_dir)
    accelerator = Accelerator(mixed_precision=choose_mixed_precision(config.train.mixed_precision),
                              gradient_accumulation_steps=config.train.gradient_accumulation_steps)

    def emit(event: Event) -> None:
        if on_event is not None and accelerator.is_main_process:
            on_event(event)

    try:
        return _train(config, accelerator, emit, should_stop, resume_from, workdir)
    except StudioError as err:
        emit(Failed(error=str(err), advice=err.fix or ""))
        raise
    except torch.cuda.OutOfMemoryError as err:
        failure = TrainingError("ran out of GPU memory", fix="Lower train.batch_size or data.resolution, or set "
                                "train.gradient_checkpointing = true.")
        emit(Failed(error=str(failure), advice=failure.fix or ""))
        raise failure from err


def _train(config, accelerator, emit, should_stop, resume_from, workdir) -> Result:
    cfg = config.train
    # Find the data before any model loads, so a wrong path fails in a second.
    items = scan_dataset(config.data)
    set_seed(cfg.seed)

    # The frozen base model with trainable LoRA layers; frozen weights in the compute dtype.
    base = load_base(config.model)
    resolution = config.data.resolution or base.default_resolution
    lora_configs = add_lora(base, config.network)
    frozen_dtype = weight_dtype(accelerator.mixed_precision)
    pipe = base.pipe
    for name in ("unet", "vae", *base.family.text_encoder_names):
        module = getattr(pipe, name).to(accelerator.device)
        if frozen_dtype != torch.float32:
            module.to(dtype=frozen_dtype)
    params = trainable_parameters(base, config.network)
    for group in params.values():
        for p in group:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()

    # Latents and (static) captions are encoded once, so each step runs only the UNet.
    cache_text = captions_are_static(config.data) and not config.network.train_text_encoder
    examples = ExampleSet(base, items, config.data, resolution, accelerator.device, frozen_dtype, cache_text)
    text_fn = _trainable_text_fn(base) if config.network.train_text_encoder else None

    # Optimizer and LR schedule; accelerate steps the schedule once per process, hence the factor.
    groups = [{"params": params["unet"], "lr": config.optim.learning_rate}]
    for name in params.keys() - {"unet"}:
        groups.append({"params": params[name], "lr": config.optim.text_encoder_lr or config.optim.learning_rate})
    optimizer = torch.optim.AdamW(groups, betas=(config.optim.beta1, config.optim.beta2),
                                  weight_decay=config.optim.weight_decay, eps=config.optim.eps)
    lr_scheduler = get_scheduler(config.optim.lr_scheduler, optimizer,
                                 num_warmup_steps=config.optim.warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.steps * accelerator.num_processes)
    trained = [pipe.unet] + [getattr(pipe, n) for n in params.keys() - {"unet"}]
    register_lora_state_hooks(accelerator, base, lora_configs)
    prepared = accelerator.prepare(*trained, optimizer, lr_scheduler)
    unet, optimizer, lr_scheduler = prepared[0], prepared[-2], prepared[-1]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # Resume: the newest complete checkpoint restores weights, optimizer, schedule, RNG and data position.
    step, micro_step = 0, 0
    if resume_from is not None:
        found = ckpt.resolve_resume(resume_from)
        if found is not None:
            state = ckpt.load_checkpoint(accelerator, found, config)
            step, micro_step = state.step, state.micro_step

    if accelerator.is_main_process:
        Path(config.export.output_dir).mkdir(parents=True, exist_ok=True)
        save_config(config, Path(config.export.output_dir) / "config.toml")
    emit(Started(total_steps=cfg.steps, start_step=step, device=str(accelerator.device),
                 mixed_precision=accelerator.mixed_precision, cached_text=cache_text, cached_latents=True,
                 num_images=len(items)))

    # The loop: one optimizer step per pass (after gradient accumulation), events, samples, checkpoints.
    world, rank = accelerator.num_processes, accelerator.process_index
    epoch_cache: dict[int, list[list[int]]] = {}
    losses: list[float] = []
    window: list[float] = []
    started, start_step, stopped = time.perf_counter(), step, False
    unet.train()
    while step < cfg.steps:
        epoch, batches = _batches_at(examples, micro_step, cfg, world, epoch_cache)
        batch_ids = batches[(micro_step % (len(batches) // world)) * world + rank]
        rng = np.random.default_rng([cfg.seed, micro_step, rank])
        with accelerator.accumulate(unet):
            latents, text, sizes = examples.batch(batch_ids, rng, text_fn)
            loss = training_step(unet, noise_scheduler, base, latents, text, sizes, config)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_([p for g in params.values() for p in g], config.optim.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        micro_step += 1
        window.append(accelerator.gather(loss.detach()).mean().item())
        if not accelerator.sync_gradients:
            continue
        step += 1
        step_loss = sum(window) / len(window)
        window.clear()
        if not math.isfinite(step_loss):
            raise TrainingError(f"loss became {step_loss} at step {step}", fix=NAN_ADVICE)
        losses.append(step_loss)
        rate = (step - start_step) / max(time.perf_counter() - started, 1e-9)
        emit(Progress(step=step, total_steps=cfg.steps, loss=step_loss, lr=lr_scheduler.get_last_lr()[0],
                      it_per_s=rate, eta_s=(cfg.steps - step) / max(rate, 1e-9), epoch=epoch))

        stopped = step < cfg.steps and should_stop()
        if config.sample.every_n_steps and (step % config.sample.every_n_steps == 0 or step == cfg.steps):
            _samples(accelerator, base, config, examples, workdir, step, resolution, emit)
        if stopped or (cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps):
            _checkpoint(accelerator, workdir, config, step, micro_step, epoch, emit)
        if stopped:
            break

    # Export the LoRA in both key formats (and the config beside it) from the main process only.
    accelerator.wait_for_everyone()
    outputs: list[Path] = []
    if accelerator.is_main_process:
        outputs = export_lora(base, lora_configs, config, step)
        outputs.append(Path(config.export.output_dir) / "config.toml")
    emit(Done(step=step, outputs=[str(p) for p in outputs], stopped=stopped))
    accelerator.end_training()
    return Result(outputs, step, losses[-1] if losses else float("nan"), stopped, losses)


def training_step(unet, noise_scheduler, base, latents, text, sizes, config: TrainConfig) -> torch.Tensor:
    """Noise the latents at random timesteps and score the UNet's prediction of the target."""
    noise = torch.randn_like(latents)
    if config.train.noise_offset:
        noise = noise + config.train.noise_offset * torch.randn(
            latents.shape[0], latents.shape[1], 1, 1, device=latents.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              device=latents.device).long()
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if base.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    unet_dtype = next(p.dtype for p in unet.parameters() if not p.requires_grad)
    kwargs = base.family.unet_kwargs({k: v.to(unet_dtype) for k, v in text.items()}, sizes)
    prediction = unet(noisy.to(unet_dtype), timesteps, **kwargs).sample
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.train.min_snr_gamma:
        snr = compute_snr(noise_scheduler, timesteps)
        weight = torch.clamp(snr, max=config.train.min_snr_gamma) / snr
        if base.prediction_type == "v_prediction":
            weight = torch.clamp(snr, max=config.train.min_snr_gamma) / (snr + 1)
        loss = loss * weight
    return loss.mean()


def _batches_at(examples, micro_step, cfg, world, cache) -> tuple[int, list[list[int]]]:
    per_epoch = len(examples.epoch_batches(0, cfg.batch_size, cfg.seed)) // world
    if per_epoch == 0:
        raise TrainingError(f"has fewer batches ({len(examples)} samples) than processes ({world})",
                            where="dataset", fix="Add images or lower train.num_processes / train.batch_size.")
    epoch = micro_step // per_epoch
    if epoch not in cache:
        cache.clear()
        cache[epoch] = examples.epoch_batches(epoch, cfg.batch_size, cfg.seed)
    return epoch, cache[epoch]


def _trainable_text_fn(base):
    return lambda captions: base.family.encode_text_trainable(base.pipe, captions)


def _samples(accelerator, base, config, examples, workdir, step, resolution, emit) -> None:
    if not accelerator.is_main_process:
        return
    prompts = config.sample.prompts or [examples.examples[0].caption]
    unet = base.pipe.unet
    was_training = unet.training
    unet.eval()
    paths = render_samples(base.pipe, prompts, Path(workdir) / "samples" / f"step-{step}",
                           negative_prompt=config.sample.negative_prompt, seed=config.sample.seed,
                           steps=config.sample.steps, guidance=config.sample.guidance,
                           width=resolution, height=resolution)
    unet.train(was_training)
    emit(SampleSaved(step=step, paths=[str(p) for p in paths]))


def _checkpoint(accelerator, workdir, config, step, micro_step, epoch, emit) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = ckpt.TrainerState(step=step, micro_step=micro_step, epoch=epoch, config=config.to_dict())
        path = ckpt.save_checkpoint(accelerator, workdir, state, config.train.keep_last)
        emit(CheckpointSaved(step=step, path=str(path)))
    accelerator.wait_for_everyone()
