"""Pretrain the tiny SD 1.x model on the shapes vocabulary, so the embedded `tiny` base draws.

    python tools/pretrain_tiny.py --out runs/pretrain        # VAE, then UNet; resumes where it stopped

Same architecture, key names and size as `tiny-random` (trainer.models.tiny): only weights change. Phases:
1. VAE: reconstruction (L1 + MSE, of the posterior mean, a small variance penalty) on random crops of fresh
   pictures (the VAE is fully convolutional; crops make a step several times cheaper). Its latent scale
   (`scaling_factor`) is then measured.
2. UNet: epsilon prediction (the scheduler's), on latents of a fixed set of pictures encoded once, with 10 %
   empty captions so classifier-free guidance works, and an EMA of the weights (what ships).
The text encoder stays the frozen random one: a random CLIP still gives every token its own embedding, the
UNet's cross-attention learns to read them, and keeping it frozen costs no backward pass, lets the captions'
embeddings be computed once, and leaves the tokenizer/encoder pair identical to `tiny-random`'s.
Every phase is deterministic from `seed` and checkpointed (`state.pt`, our own file, read weights_only).
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainer.models.shapes import make_pictures


@dataclass
class PretrainConfig:
    """Settings of one pretraining run."""

    out: str = "runs/pretrain"
    """Folder for checkpoints and the final `tiny-sd15.safetensors`."""
    seed: int = 1
    vae_steps: int = 600
    vae_batch: int = 16
    vae_crop: int = 64
    vae_lr: float = 1e-3
    var_weight: float = 1e-2
    vae_norm_groups: int = 4
    """GroupNorm groups of the VAE (a setting, not a weight: every key and shape stays). The random model's 16
    groups put one channel in each group of the decoder's 16-channel last stage, so `conv_norm_out` normalises
    every channel of a flat background to zero and the decoder cannot tell a blue background from a red one;
    4 groups keep 4 channels a group, as SD 1.5's VAE has (32 groups of 128)."""
    unet_steps: int = 1000
    unet_batch: int = 64
    unet_lr: float = 1.5e-3
    pictures: int = 2000
    """Distinct training pictures whose latents the UNet phase encodes once."""
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    checkpoint_every: int = 100


def to_tensor(images) -> torch.Tensor:
    """PIL images -> a float batch in [-1, 1], channels first."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def lr_at(step: int, total: int, peak: float, warmup: int = 30) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_state(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a checkpoint is whole or absent


def _load_state(path: Path):
    return torch.load(path, weights_only=True) if path.is_file() else None


def _progress(total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, mininterval=5.0)


def train_vae(vae, cfg: PretrainConfig, out: Path) -> None:
    """Phase 1: teach the VAE to reconstruct the vocabulary's pictures."""
    path = out / "vae_state.pt"
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    state, step = _load_state(path), 0
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    vae.train()
    bar = _progress(cfg.vae_steps, step, "vae")
    while step < cfg.vae_steps:
        # Each step's pictures and crops come from (seed, step), so a resumed run sees the same data.
        rng = random.Random(cfg.seed * 1_000_003 + step)
        torch.manual_seed(cfg.seed * 7919 + step)
        images = [image for image, _, _ in make_pictures(rng.randrange(2**31), cfg.vae_batch)]
        x0, y0 = rng.randrange(128 - cfg.vae_crop + 1), rng.randrange(128 - cfg.vae_crop + 1)
        batch = to_tensor(images)[:, :, y0:y0 + cfg.vae_crop, x0:x0 + cfg.vae_crop]
        posterior = vae.encode(batch).latent_dist
        # From scratch, sampling drowns the young encoder's small means in unit noise and the VAE learns
        # nothing for hundreds of steps: decode the mean, and shrink the posterior's variance instead of a KL
        # (so `latent_dist.sample()` stays close to the mean the UNet is trained on).
        recon = vae.decode(posterior.mean).sample
        loss = F.l1_loss(recon, batch) + F.mse_loss(recon, batch) + cfg.var_weight * posterior.var.mean()
        _optimizer_step(opt, vae, loss, lr_at(step, cfg.vae_steps, cfg.vae_lr))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _save_state(path, model=vae.state_dict(), opt=opt.state_dict(), step=step)
    bar.close()
    vae.eval()


@torch.no_grad()
def encode_pictures(pipe, cfg: PretrainConfig, out: Path) -> dict:
    """Latent mean/std and caption embeddings of the fixed picture set (cached in `data.pt`)."""
    path = out / "data.pt"
    cached = _load_state(path)
    if cached is not None and cached["pictures"] == cfg.pictures:
        return cached
    means, stds, captions = [], [], []
    pictures = list(make_pictures(cfg.seed + 101, cfg.pictures))
    for start in range(0, len(pictures), 32):
        chunk = pictures[start:start + 32]
        dist = pipe.vae.encode(to_tensor([image for image, _, _ in chunk])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        captions += [caption for _, caption, _ in chunk]
    mean, std = torch.cat(means), torch.cat(stds)
    scale = float(1.0 / mean.std())  # the measured latent scale, as SD's 0.18215 was measured
    unique = sorted(set(captions)) + [""]
    embeds = embed_captions(pipe, unique)
    index = {caption: i for i, caption in enumerate(unique)}
    data = dict(pictures=cfg.pictures, mean=mean, std=std, scale=scale, embeds=embeds,
                caption_index=torch.tensor([index[c] for c in captions]), empty=len(unique) - 1)
    _save_state(path, **data)
    return data


@torch.no_grad()
def embed_captions(pipe, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's last hidden states, exactly as the pipeline computes them."""
    chunks = []
    for start in range(0, len(captions), 64):
        ids = pipe.tokenizer(captions[start:start + 64], padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        chunks.append(pipe.text_encoder(ids)[0])
    return torch.cat(chunks)


def train_unet(pipe, data: dict, cfg: PretrainConfig, out: Path):
    """Phase 2: epsilon prediction on the encoded pictures; returns the EMA UNet."""
    unet, scheduler = pipe.unet, pipe.scheduler
    path = out / "unet_state.pt"
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.01)
    state, step = _load_state(path), 0
    if state is not None:
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    alphas = scheduler.alphas_cumprod
    count = data["mean"].shape[0]
    unet.train()
    bar = _progress(cfg.unet_steps, step, "unet")
    while step < cfg.unet_steps:
        generator = torch.Generator().manual_seed(cfg.seed * 104729 + step)
        picks = torch.randint(0, count, (cfg.unet_batch,), generator=generator)
        latents = data["mean"][picks] * data["scale"]  # the VAE was trained on its means (see train_vae)
        caption = data["caption_index"][picks].clone()
        caption[torch.rand(cfg.unet_batch, generator=generator) < cfg.caption_dropout] = data["empty"]
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(noisy, t, data["embeds"][caption]).sample, noise)
        _optimizer_step(opt, unet, loss, lr_at(step, cfg.unet_steps, cfg.unet_lr))
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            _save_state(path, model=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step)
    bar.close()
    return ema


def _optimizer_step(opt, module, loss, lr: float) -> None:
    """One clipped AdamW step at `lr` (both phases step the same way)."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()


def regroup_vae(vae, groups: int):
    """The same VAE (same weights) with `groups` GroupNorm groups."""
    from diffusers import AutoencoderKL

    if vae.config.norm_num_groups == groups:
        return vae
    regrouped = AutoencoderKL.from_config(vae.config, norm_num_groups=groups)
    regrouped.load_state_dict(vae.state_dict())
    return regrouped


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) both phases and write `<out>/tiny-sd15.safetensors`."""
    from trainer.models.tiny import build_tiny_pipeline, save_pretrained_weights

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pipe = build_tiny_pipeline("sd15")  # the random weights: tiny-random
    pipe.vae = regroup_vae(pipe.vae, cfg.vae_norm_groups)
    pipe.text_encoder.half().float()  # the shipped encoder is fp16: train against exactly its outputs
    pipe.text_encoder.requires_grad_(False)
    started = time.time()
    train_vae(pipe.vae, cfg, out)
    pipe.vae.requires_grad_(False)
    data = encode_pictures(pipe, cfg, out)
    print(f"latent scale {data['scale']:.4f}; {len(data['embeds']) - 1} distinct captions", flush=True)
    ema = train_unet(pipe, data, cfg, out)
    pipe.unet.load_state_dict(ema.state_dict())
    pipe.vae.register_to_config(scaling_factor=data["scale"])
    meta = {key: value for key, value in asdict(cfg).items() if key != "out"}  # same settings, same bytes
    target = save_pretrained_weights(pipe, out / "tiny-sd15.safetensors", meta=meta)
    print(f"wrote {target} in {time.time() - started:.0f} s", flush=True)
    return target
