"""The embedded tiny Stable Diffusion pipelines: the real architectures at a fraction of the width.

    pipe = build_tiny_pipeline("sd15")          # same weights on every machine (fixed seed)
    save_tiny_model("sdxl", "tiny-sdxl/")       # a diffusers folder the family's pipeline class loads

The SD 1.x model keeps SD 1.5's block structure (four down and four up blocks, three with cross-attention,
two layers per block, a VAE that downsamples 8x, 77-token prompts), so every state-dict key is named as in
the real model, and its default resolution is 128 px. Its attention has 2 heads (16 and 32 channels wide),
where SD 1.5 has 8 of 40-160: head count does not change any weight's shape.

The SD 2.x model adds what SD 2 changed: an OpenCLIP-style text encoder (gelu, the penultimate layer, so
one layer fewer than OpenCLIP's), a head count per block with linear projections in the transformers, and
a v-prediction scheduler. The SDXL model has SDXL's three down blocks (the first without attention), a
transformer depth that grows per block, two text encoders of different widths (the second with a
projection whose pooled output conditions the UNet with the size/crop `add_time_ids`), and EulerDiscrete.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# torch is imported inside the builders: `lora-studio --help`, `jobs` and `doctor` read the names and sizes
# below without paying for it.

TINY_NAMES = {"tiny": "sd15", "tiny-sd15": "sd15", "tiny-random": "sd15", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl",
              "tiny-sdxl-random": "sdxl"}
# Names whose weights are the pretrained ones shipped in assets/ (tools/pretrain_tiny.py made them: the tiny SD 1.x
# and SDXL models trained to draw the shapes vocabulary, trainer/models/shapes.py); every other tiny name is the
# seeded random model, for tests that need the exact structure only.
PRETRAINED = frozenset({"tiny", "tiny-sd15", "tiny-sdxl"})
PRETRAINED_FILE = Path(__file__).parent / "assets" / "tiny-sd15-shapes.safetensors"
PRETRAINED_SHA256 = "72d9e77cf6da7a8499ca562fab6dcd8ee523edccd63d4c11da12aeac23bfc621"
"""SHA-256 of PRETRAINED_FILE; a file that does not match is refused."""
PRETRAINED_SDXL_FILE = Path(__file__).parent / "assets" / "tiny-sdxl-shapes.safetensors"
PRETRAINED_SDXL_SHA256 = "481d1a8c58e442a90e03a63f5bb00425a692481229ff0df6707e45607966e63e"
PRETRAINED_WEIGHTS = {"sd15": (PRETRAINED_FILE, PRETRAINED_SHA256),
                      "sdxl": (PRETRAINED_SDXL_FILE, PRETRAINED_SDXL_SHA256)}
"""The shipped weights (file, SHA-256) of each pretrained family."""
_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
TINY_RESOLUTION = {"sd15": 128, "sd2": 128, "sdxl": 128}
TINY_SEED = 20241122

_SD15_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=2,
    # diffusers reads this as the head count, like SD 1.5's 8. At these widths 8 heads are 4 channels wide, a
    # size no real model has, at which attention took half the training step; 2 heads of 16/32 channels keep
    # attention's share of the step (and the VAE-to-UNet time ratio) close to the real model's.
    attention_head_dim=2,
    cross_attention_dim=64,
    norm_num_groups=16,
)

_SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=128,
    scaling_factor=0.18215,
)

_SD15_TEXT = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=64,
)

_SD_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

_SD2_UNET = dict(
    _SD15_UNET,
    attention_head_dim=(2, 4, 4, 4),
    use_linear_projection=True,
)

_SD2_TEXT = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=64,
)

_SD2_SCHEDULER = dict(_SD_SCHEDULER, prediction_type="v_prediction")

_SDXL_UNET = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 3),
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    cross_attention_dim=32 + 64,
    addition_embed_type="text_time",
    addition_time_embed_dim=16,
    projection_class_embeddings_input_dim=64 + 6 * 16,
    norm_num_groups=16,
)

_SDXL_TEXT = dict(
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=32,
)

_SDXL_TEXT_2 = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=64,
)

_SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


def build_tiny_pipeline(family: str = "sd15"):
    """Build the tiny pipeline of `family` (sd15, sd2, sdxl) from a fixed seed, the same everywhere."""
    builders = {"sd15": _build_sd15, "sd2": _build_sd2, "sdxl": _build_sdxl}
    family = TINY_NAMES.get(family, family)
    if family not in builders:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {sorted(builders)}")
    pipe = builders[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_tiny_pipeline(name: str = "tiny"):
    """The pipeline a tiny name stands for: the shipped pretrained weights for PRETRAINED names, else random."""
    family = TINY_NAMES.get(name, name)
    pipe = build_tiny_pipeline(family)
    if name in PRETRAINED:
        load_pretrained_weights(pipe, *PRETRAINED_WEIGHTS[family])
    return pipe


def load_pretrained_weights(pipe, path: str | Path, sha256: str | None = None):
    """Load a file `save_pretrained_weights` wrote into the same family's pipeline, after checking its SHA-256."""
    import json

    from safetensors import safe_open

    from trainer.errors import ModelError

    path = Path(path)
    if not path.is_file():
        raise ModelError("is missing from the package", where=str(path),
                         fix="Reinstall LoRA Studio, or use --base-model tiny-random (SD 1.x) or tiny-sdxl-random "
                             "for the random-weight model.")
    if sha256 is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
        raise ModelError("does not match its pinned SHA-256 (damaged or replaced)", where=str(path),
                         fix="Reinstall LoRA Studio, or regenerate it with tools/pretrain_tiny.py and update "
                             "its SHA-256 in trainer/models/tiny.py (PRETRAINED_WEIGHTS).")
    with safe_open(str(path), framework="pt") as weights:
        names = list(weights.keys())  # safe_open is not iterable
        metadata = json.loads((weights.metadata() or {}).get("lora_studio_tiny", "{}"))
        groups = int(metadata.get("vae_norm_num_groups", pipe.vae.config.norm_num_groups))
        if groups != pipe.vae.config.norm_num_groups:  # a setting of the shipped VAE: no key or shape changes
            from diffusers import AutoencoderKL

            pipe.vae = AutoencoderKL.from_config(pipe.vae.config, norm_num_groups=groups)
        for component in _COMPONENTS:
            module = getattr(pipe, component, None)
            if module is None:
                continue
            prefix = component + "."
            state = {k[len(prefix):]: weights.get_tensor(k).float() for k in names if k.startswith(prefix)}
            module.load_state_dict(state, strict=True)
    if "scaling_factor" in metadata:
        pipe.vae.register_to_config(scaling_factor=float(metadata["scaling_factor"]))
    return pipe


def _tokenizer(pad_token: str | None = None):
    """The locally built CLIP tokenizer; SD 2's OpenCLIP tokenizer pads with '!' instead of end-of-text."""
    import tempfile

    from transformers import CLIPTokenizer

    from trainer.models.tokenizer import write_tiny_tokenizer

    extra = {"pad_token": pad_token} if pad_token else {}
    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder), **extra)


def _text_config(settings: dict, pad_token: str | None = None):
    from transformers import CLIPTextConfig

    from trainer.models.tokenizer import tiny_vocab

    vocab = tiny_vocab()[0]
    vocab_size = len(vocab)
    pad_id = vocab[pad_token] if pad_token else vocab_size - 1
    return CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                          pad_token_id=pad_id, **settings)


def _build_sd15():
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(**_SD15_UNET)
        vae = AutoencoderKL(**_SD_VAE)
        text_encoder = CLIPTextModel(_text_config(_SD15_TEXT))
    scheduler = DDIMScheduler(**_SD_SCHEDULER)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _build_sd2():
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = _tokenizer(pad_token="!")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 2)
        unet = UNet2DConditionModel(**_SD2_UNET)
        vae = AutoencoderKL(**_SD_VAE)
        text_encoder = CLIPTextModel(_text_config(_SD2_TEXT, pad_token="!"))
    scheduler = DDIMScheduler(**_SD2_SCHEDULER)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _build_sdxl():
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = _tokenizer(), _tokenizer(pad_token="!")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 3)
        unet = UNet2DConditionModel(**_SDXL_UNET)
        vae = AutoencoderKL(**dict(_SD_VAE, scaling_factor=0.13025, force_upcast=True))
        text_encoder = CLIPTextModel(_text_config(_SDXL_TEXT))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(_SDXL_TEXT_2, pad_token="!"))
    scheduler = EulerDiscreteScheduler(**_SDXL_SCHEDULER)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, add_watermarker=False,
    )


def save_tiny_model(family: str, out_dir: str | Path, random_weights: bool = False) -> Path:
    """Write the tiny pipeline as a diffusers folder (safetensors weights): SD 1.x and SDXL with the shipped
    pretrained weights unless `random_weights`, SD 2.x with its seeded random ones."""
    out_dir = Path(out_dir)
    family = TINY_NAMES.get(family, family)
    pretrained = {"sd15": "tiny", "sdxl": "tiny-sdxl"}.get(family)
    pipe = load_tiny_pipeline(pretrained) if pretrained and not random_weights else build_tiny_pipeline(family)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def weights_hash(pipe) -> str:
    """SHA-256 over every tensor of the UNet, VAE and text encoder, in key order."""
    import torch

    digest = hashlib.sha256()
    for component in _COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{component}.{key}".encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_pretrained_weights(pipe, path: str | Path, meta: dict | None = None) -> Path:
    """Write the pipeline's UNet, VAE and text encoder(s) as one fp16 safetensors file (the shipped form)."""
    import json

    import torch
    from safetensors.torch import save_file

    tensors = {}
    for component in _COMPONENTS:
        if getattr(pipe, component, None) is None:
            continue
        for key, tensor in getattr(pipe, component).state_dict().items():
            tensors[f"{component}.{key}"] = tensor.detach().to("cpu", torch.float16).contiguous()
    # One metadata key: safetensors writes several in hash-map order, and the same weights must be the same bytes.
    settings = {"scaling_factor": float(pipe.vae.config.scaling_factor),
                "vae_norm_num_groups": int(pipe.vae.config.norm_num_groups), "pretrain": meta or {}}
    metadata = {"lora_studio_tiny": json.dumps(settings, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)
