"""Pretrain the tiny SD 1.x or SDXL model on the shapes vocabulary, so the embedded `tiny` / `tiny-sdxl` bases draw.

    python tools/pretrain_tiny.py --out runs/pretrain        # VAE, then UNet; resumes where it stopped
    python tools/pretrain_tiny.py --family sdxl --out runs/pretrain-sdxl

Same architecture, key names and size as `tiny-random` / `tiny-sdxl-random` (trainer.models.tiny): only weights
change. SDXL's UNet is conditioned as its pipeline conditions it: both encoders' penultimate states, the second
one's pooled output and the size/crop ids of an uncropped 128 px picture; its empty caption is all zeros, as the
pipeline's unconditional half is. Phases:
1. VAE: constructed, not trained (trainer.models.vae_init): its latent is each 8 x 8 block's mean R, G, B and
   luminance, decoded back by nearest upsampling (about 25.5 dB PSNR on held-out pictures). Trained from
   random weights on the 2-core box it stayed near 15 dB after an hour, and fine-tuning the constructed
   decoder did not raise its PSNR (bench/RESULTS.md). Its latent scale (`scaling_factor`) is then measured.
2. UNet: epsilon prediction (the scheduler's), on latents of a fixed set of pictures encoded once, with 10 %
   empty captions so classifier-free guidance works, min-SNR-5 loss weights, and an EMA of the weights
   (what ships).
The text encoder (both of SDXL's) stays frozen: a frozen encoder costs no backward pass and lets the captions'
embeddings be computed once, and trained jointly it collapsed (captions stopped changing the UNet's loss). Its random
token and position embeddings are first scaled up (`TOKEN_GAIN`, `POSITION_GAIN`): at CLIP's init scale
(0.02) every caption's output is nearly the same vector (mean cosine 0.9), and with the gains the UNet
learned to tell captions apart 2.5 times faster in a 200-step probe (bench/RESULTS.md).
Every phase is deterministic from `seed` and checkpointed (`state.pt`, our own file, read weights_only).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.models.shapes import make_pictures
from trainer.models.vae_init import block_mean_init


@dataclass
class PretrainConfig:
    """Settings of one pretraining run."""

    out: str = "runs/pretrain"
    """Folder for checkpoints and the final `tiny-<family>.safetensors`."""
    family: str = "sd15"
    """sd15 or sdxl: which tiny model (trainer.models.tiny) learns the vocabulary."""
    seed: int = 1
    vae_norm_groups: int = 4
    """GroupNorm groups of the VAE (a setting, not a weight: every key and shape stays). The random model's 16
    groups put one channel in each group of the decoder's 16-channel last stage; the constructed VAE needs
    groups of [x, -x, LEVEL, -LEVEL] (trainer.models.vae_init), which 4 groups give."""
    unet_steps: int = 2400
    unet_batch: int = 64
    unet_lr: float = 1.5e-3
    pictures: int = 2000
    """Distinct training pictures whose latents the UNet phase encodes once."""
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    """min-SNR-gamma loss weighting (Hang et al. 2023); 0 for plain MSE."""
    noise_offset: float = 0.1
    """Offset noise (a random constant per picture and channel added to the noise): without it the base
    never learned to set a background's colour from the prompt, since SD's schedule leaves the mean of the
    noisiest latent nearly as it was (the noise's mean decided the colour)."""
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


PRETRAIN_FAMILIES = ("sd15", "sdxl")
TOKEN_GAIN = 50.0
POSITION_GAIN = 10.0


@torch.no_grad()
def sharpen_text_encoder(text_encoder) -> None:
    """Scale the random token and position embeddings up, so different captions give different outputs."""
    embeddings = text_encoder.text_model.embeddings if hasattr(text_encoder, "text_model") else \
        text_encoder.embeddings
    embeddings.token_embedding.weight.mul_(TOKEN_GAIN)
    embeddings.position_embedding.weight.mul_(POSITION_GAIN)


def text_encoders(pipe) -> list:
    """The pipeline's text encoders: one for SD 1.x, two for SDXL."""
    return [encoder for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if encoder is not None]


@torch.no_grad()
def encode_pictures(pipe, cfg: PretrainConfig, out: Path) -> dict:
    """Latent mean/std and caption embeddings of the fixed picture set (cached in `data.pt`)."""
    path = out / "data.pt"
    cached = _load_state(path)
    key = f"family={cfg.family} pictures={cfg.pictures} seed={cfg.seed}"
    if cached is not None and cached.get("key") == key:  # other settings: other pictures, encoded anew
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
    embeds, pooled = embed_captions(pipe, unique)
    index = {caption: i for i, caption in enumerate(unique)}
    data = dict(key=key, pictures=cfg.pictures, mean=mean, std=std, scale=scale, embeds=embeds, pooled=pooled,
                caption_index=torch.tensor([index[c] for c in captions]), empty=len(unique) - 1)
    _save_state(path, **data)
    return data


@torch.no_grad()
def embed_captions(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prompt embeddings, pooled embeddings or None) exactly as the pipeline computes them; for SDXL the empty
    caption is all zeros, as its pipeline's unconditional half is (`force_zeros_for_empty_prompt`)."""
    chunks, pooled_chunks = [], []
    for start in range(0, len(captions), 64):
        chunk = captions[start:start + 64]
        if getattr(pipe, "text_encoder_2", None) is None:
            ids = pipe.tokenizer(chunk, padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
            chunks.append(pipe.text_encoder(ids)[0])
            continue
        embeds, _, pooled, _ = pipe.encode_prompt(chunk, device="cpu", do_classifier_free_guidance=False)
        empty = torch.tensor([caption == "" for caption in chunk])
        chunks.append(embeds.masked_fill(empty.view(-1, 1, 1), 0.0))
        pooled_chunks.append(pooled.masked_fill(empty.view(-1, 1), 0.0))
    return torch.cat(chunks), torch.cat(pooled_chunks) if pooled_chunks else None


def unet_conditions(pipe, data: dict, caption: torch.Tensor) -> dict:
    """The UNet's keyword arguments for these caption indices: SDXL's also take the pooled embedding and the
    size/crop ids of an uncropped picture at the tiny model's resolution."""
    kwargs = {"encoder_hidden_states": data["embeds"][caption]}
    if data.get("pooled") is not None:
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(len(caption), 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": data["pooled"][caption], "time_ids": ids}
    return kwargs


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
        latents = data["mean"][picks] * data["scale"]  # a sample is its mean to within 1 % (vae_init)
        caption = data["caption_index"][picks].clone()
        caption[torch.rand(cfg.unet_batch, generator=generator) < cfg.caption_dropout] = data["empty"]
        noise = torch.randn(latents.shape, generator=generator)
        noise += cfg.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        error = (unet(noisy, t, **unet_conditions(pipe, data, caption)).sample - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (error * loss_weights(a.flatten(), cfg.snr_gamma)).mean()
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


def loss_weights(alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR, gamma) / SNR per sample (epsilon prediction), or ones when gamma is 0."""
    if gamma <= 0:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


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

    if cfg.family not in PRETRAIN_FAMILIES:  # SD 2.x's tiny model predicts v, which this loss does not train
        raise ValueError(f"family {cfg.family!r}: pretraining trains {' or '.join(PRETRAIN_FAMILIES)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    pipe = build_tiny_pipeline(cfg.family)  # the random weights: tiny-random, tiny-sdxl-random
    pipe.vae = regroup_vae(pipe.vae, cfg.vae_norm_groups)
    block_mean_init(pipe.vae)
    pipe.vae.requires_grad_(False).eval()
    for encoder in text_encoders(pipe):
        sharpen_text_encoder(encoder)
        encoder.half().float()  # the shipped encoders are fp16: train against exactly their outputs
        encoder.requires_grad_(False)
    started = time.time()
    data = encode_pictures(pipe, cfg, out)
    print(f"latent scale {data['scale']:.4f}; {len(data['embeds']) - 1} distinct captions", flush=True)
    ema = train_unet(pipe, data, cfg, out)
    pipe.unet.load_state_dict(ema.state_dict())
    pipe.vae.register_to_config(scaling_factor=data["scale"])
    # Same settings, same bytes; the family is the file's keys (and SD 1.x's file predates the setting).
    meta = {key: value for key, value in asdict(cfg).items() if key not in ("out", "family")}
    target = save_pretrained_weights(pipe, out / f"tiny-{cfg.family}.safetensors", meta=meta)
    print(f"wrote {target} in {time.time() - started:.0f} s", flush=True)
    return target
