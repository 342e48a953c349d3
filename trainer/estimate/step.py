"""The peak accelerator memory of one training step, from the model's own architecture traced at real shapes.

    est = estimate_step(config)                     # or estimate_step(config, family="sdxl")
    est.peak_bytes, est.parts                       # {"weights": …, "lora": …, "activations": …, "workspace": …}

How each part is found (no rule of thumb):
- weights: every parameter and buffer of the UNet, VAE and text encoder(s) × its dtype size, as
  `precision.place_weights` puts them on the device (compute dtype; SDXL's VAE float32 under fp16);
- lora: the LoRA parameters peft adds (`network.add_lora`'s configs, on the meta model), float32, plus
  their float32 gradients and the state `optim.optimizer` keeps for each tensor, as it allocates it
  (`optimizers.state_bytes`: AdamW and schedule-free 8 bytes a parameter, Prodigy 12-16, 8-bit Adam about 2
  for tensors of 4096 values or more, Adafactor a row and a column per matrix);
- activations: the bytes still alive when the forward has produced the loss, i.e. what autograd saved for
  backward (measured by `tracker.PeakTracker` on the meta device, gradient checkpointing on or off as set);
- workspace: the rest of the traced high-water mark, on top of the activations: the transient outputs and
  the activation gradients of backward, checkpointed recomputation, the text encoder's pass when captions
  are not cached, and the noise / target / loss tensors.
- ema (only with `train.ema_decay` on and `train.ema_on_cpu` off): the EMA copy of the LoRA, float32.
Not counted: the CUDA context and kernels (~0.3-1 GB outside `max_memory_allocated`), allocator
fragmentation, the text cache (77 tokens per distinct caption) and sample rendering.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.estimate.build import ModelSpec, build_meta, model_spec, parameter_count
from trainer.estimate.tracker import PeakTracker, fused_attention, module_tensors
from trainer.examples import captions_are_static
from trainer.optimizers import state_bytes

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENS = 77


@dataclass
class Estimate:
    """One step's peak memory in bytes, by part, and the settings it was estimated for."""

    parts: dict[str, int]
    settings: dict
    parameters: dict[str, int] = field(default_factory=dict)
    """Parameter count of each component (and `lora`), read from the architecture."""
    source: str = ""

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "parts": dict(self.parts), "settings": dict(self.settings),
                "parameters": dict(self.parameters), "source": self.source}


def step_settings(config: TrainConfig, spec: ModelSpec, optimizer: str | None = None) -> dict:
    """The settings that decide memory, resolved as the loop resolves them (`auto` precision is bf16: the
    estimate is for an accelerator, and bf16 is what `auto` picks on one that supports it)."""
    precision = config.train.mixed_precision
    return {"family": spec.family.name, "resolution": config.data.resolution or spec.default_resolution,
            "batch_size": config.train.batch_size, "rank": config.network.rank,
            "target_modules": list(config.network.target_modules),
            "mixed_precision": "bf16" if precision == "auto" else precision,
            "gradient_checkpointing": config.train.gradient_checkpointing,
            "train_text_encoder": config.network.train_text_encoder,
            "cached_text": captions_are_static(config.data) and not config.network.train_text_encoder,
            "optimizer": optimizer or config.optim.optimizer, "quantize": config.model.quantize}


def estimate_step(config: TrainConfig, family: str | None = None, optimizer: str | None = None,
                  spec: ModelSpec | None = None) -> Estimate:
    """Estimate one training step of `config` (see the module docstring); `spec` skips re-reading configs;
    `optimizer` counts another optimizer's state than `optim.optimizer`'s."""
    spec = spec or model_spec(config.model, family)
    settings = step_settings(config, spec, optimizer)
    net = config.network
    # The optimizer and quantization change counted bytes only: one trace serves every choice of them.
    traced = {k: v for k, v in settings.items() if k not in ("optimizer", "quantize")}
    key = json.dumps([spec.source, traced, net.dropout, net.use_dora, net.use_rslora], sort_keys=True)
    if key not in _TRACED:
        _TRACED[key] = _measure(config, spec, settings)
    weights, savings, counts, shapes, traced_peak, forward_bytes, traced_grads = _TRACED[key]
    if settings["quantize"] != "none":
        weights -= savings
    lora = counts["lora"] * (4 + 4) + state_bytes(settings["optimizer"], shapes)  # float32 weights, gradients
    parts = {"weights": weights, "lora": lora,
             "activations": forward_bytes, "workspace": max(traced_peak - forward_bytes - traced_grads, 0)}
    if config.train.ema_decay and not config.train.ema_on_cpu:
        parts["ema"] = counts["lora"] * 4  # trainer/ema.py: one float32 copy on the device
    return Estimate(parts=parts, settings=settings, parameters=dict(counts), source=spec.source)


_TRACED: dict[str, tuple] = {}
"""Traces by (model, memory settings): `fit` and the UI ask again for settings already traced."""


def _measure(config: TrainConfig, spec: ModelSpec, settings: dict) -> tuple:
    """Build the meta model with LoRA, count its weights and trace a step: (weights, bytes a 4-bit UNet
    saves, counts, LoRA shapes, peak, forward, LoRA gradient bytes); a shape comes with whether the tensor
    starts at zero (LoRA's B)."""
    from trainer.network import add_lora, trainable_parameters

    compute = DTYPES[settings["mixed_precision"]]
    parts = build_meta(spec)
    pipe = SimpleNamespace(**parts, tokenizer=_Tokenizer(), tokenizer_2=_Tokenizer())
    base = SimpleNamespace(pipe=pipe, family=spec.family)
    add_lora(base, config.network)
    params = [p for group in trainable_parameters(base, config.network).values() for p in group]
    weights = 0
    for name, module in parts.items():
        dtype = spec.family.vae_dtype(SimpleNamespace(config=spec.vae), compute) if name == "vae" else compute
        torch.nn.Module.to(module, dtype)  # diffusers' own `to` warns about casting, which is what we want
        weights += sum(t.numel() * t.element_size() for t in module_tensors(module) if not t.requires_grad)
    savings = quantized_savings(parts["unet"])
    counts = {name: parameter_count(m) - sum(p.numel() for p in m.parameters() if p.requires_grad)
              for name, m in parts.items()}
    counts["lora"] = sum(p.numel() for p in params)
    shapes = [(tuple(p.shape), "lora_B" in n) for m in parts.values() for n, p in m.named_parameters()
              if p.requires_grad]
    return (weights, savings, counts, shapes, *_trace(base, settings, compute))


def quantized_savings(unet: torch.nn.Module) -> int:
    """Bytes saved by holding the UNet's frozen linear weights in 4 bits (`model.quantize = "nf4"`): two
    weights a byte plus one float32 scale per 64-weight block, instead of the compute dtype."""
    saved = 0
    for module in unet.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad:
            n = module.weight.numel()
            saved += n * module.weight.element_size() - (n // 2 + n // 64 * 4)
    return saved


def _trace(base, settings: dict, compute: torch.dtype) -> tuple[int, int, int]:
    """Run one step's forward and backward on the meta device: (peak, alive after forward, LoRA gradients)."""
    pipe, family = base.pipe, base.family
    unet = pipe.unet
    if settings["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    trained = [unet, *(getattr(pipe, n) for n in family.text_encoder_names)]
    # LoRA weights take part in the compute dtype, as autocast runs them (their float32 masters are in `lora`).
    for module in trained:
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.to(compute)
    batch, res = settings["batch_size"], settings["resolution"]
    vae = pipe.vae.config
    scale = 2 ** (len(vae.block_out_channels) - 1)
    shape = (batch, vae.latent_channels, res // scale, res // scale)
    ignore = module_tensors(*(getattr(pipe, n) for n in ("unet", "vae", *family.text_encoder_names)))
    captions = [""] * batch
    with PeakTracker(ignore) as tracker, fused_attention():
        latents = torch.empty(shape, device="meta")
        noise, timesteps = torch.empty_like(latents), torch.zeros(batch, dtype=torch.long, device="meta")
        if settings["train_text_encoder"]:
            for name in family.text_encoder_names:
                getattr(pipe, name).train()
            text = family.encode_text_trainable(pipe, captions)
        else:
            with torch.no_grad():
                text = family.encode_text(pipe, captions)
        sizes = _sizes(batch, res)
        kwargs = family.unet_kwargs({k: v.to(compute) for k, v in text.items()}, sizes)
        prediction = unet(latents.to(compute), timesteps, **kwargs).sample
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3)).mean()
        del prediction, kwargs, text
        forward_bytes = tracker.current
        loss.backward()
        grads = sum(p.grad.nbytes for m in trained for p in m.parameters() if p.grad is not None)
    return tracker.peak, forward_bytes, grads


def _sizes(batch: int, res: int):
    from trainer.models.families import ImageSizes

    return ImageSizes([(res, res)] * batch, [(0, 0)] * batch, (res, res))


class _Tokenizer:
    """Stands in for a CLIP tokenizer: the family tokenizes to `TOKENS` ids a caption, on the meta device."""

    model_max_length = TOKENS

    def __call__(self, captions, **_):
        return SimpleNamespace(input_ids=torch.zeros(len(captions), TOKENS, dtype=torch.long, device="meta"))


def with_settings(config: TrainConfig, **changes) -> TrainConfig:
    """A copy of `config` with dotted-free shortcuts changed: batch_size, resolution, gradient_checkpointing,
    train_text_encoder, mixed_precision, optimizer, quantize (what `fit` tries)."""
    train, data, network, optim, model = config.train, config.data, config.network, config.optim, config.model
    if "quantize" in changes:
        model = dataclasses.replace(model, quantize=changes["quantize"])
    if "optimizer" in changes:
        optim = dataclasses.replace(optim, optimizer=changes["optimizer"])
    for key in ("batch_size", "gradient_checkpointing", "mixed_precision"):
        if key in changes:
            train = dataclasses.replace(train, **{key: changes[key]})
    if "resolution" in changes:
        data = dataclasses.replace(data, resolution=changes["resolution"])
    if "train_text_encoder" in changes:
        network = dataclasses.replace(network, train_text_encoder=changes["train_text_encoder"])
        if not changes["train_text_encoder"]:
            data = dataclasses.replace(data, shuffle_tags=False, caption_dropout=0.0, keep_tokens=0)
    return dataclasses.replace(config, model=model, train=train, data=data, network=network, optim=optim)
