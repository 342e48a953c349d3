"""Single-file checkpoints (the original layout A1111, ComfyUI and model sites use), loaded offline.

    family = detect_family(read_keys("model.safetensors"))          # "sd15", "sd2" or "sdxl"
    pipe = load_single_file("model.safetensors", base_config="")    # configs from assets/ when not given

The family comes from the keys (each family names its text encoders differently). The pipeline is then
built by diffusers' `from_single_file` with `config=` a local folder: the configs shipped in
`trainer/models/assets/<family>/` plus tokenizer files made from CLIP's BPE merges shipped beside them,
the tiny models' own configs when the file is a tiny model, or the user's `--base-config`.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import tempfile
from pathlib import Path

from trainer.errors import ModelError
from trainer.models.ldm_keys import UNET_PREFIX, VAE_PREFIX

ASSETS = Path(__file__).parent / "assets"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
# Keys that tell the families apart; checked in order (SDXL also has SD-like UNet keys).
_MARKERS = [
    ("sdxl", "conditioner.embedders.1.model.positional_embedding"),
    ("sd2", "cond_stage_model.model.token_embedding.weight"),
    ("sd15", "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"),
]
_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_REAL_WIDTH = 320  # the first UNet block of every real SD 1/2/XL model
_PIPELINES = {"sd15": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
              "sdxl": "StableDiffusionXLPipeline"}


def read_shapes(path: str | Path, allow_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a checkpoint, without loading safetensors data."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        refuse_pickle(path, allow_pickle)
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ModelError("holds Python objects besides tensors, which weights_only loading refuses",
                             where=str(path), fix="Use a .safetensors version of this model.") from err
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    if path.suffix.lower() != ".safetensors":
        raise ModelError("is not a .safetensors checkpoint", where=str(path),
                         fix="Convert it to .safetensors, or pass a diffusers folder or hub id.")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own types for truncated and foreign files
        raise ModelError(f"is not a readable safetensors file ({err})", where=str(path),
                         fix="Download it again; the file may be truncated.") from err


def refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise ModelError(
            f"is a pickle file ({path.suffix}), which can run code when loaded", where=str(path),
            fix="Use a .safetensors version of the model, or pass --allow-pickle (model.allow_pickle = true) "
                "if you trust its source; it is then loaded with torch.load(weights_only=True).")


def detect_family(shapes: dict[str, tuple[int, ...]], where: str = "the checkpoint") -> str:
    """`sd15`, `sd2` or `sdxl` from the key names; a ModelError naming what is missing otherwise."""
    if "conditioner.embedders.0.model.text_projection" in shapes:
        raise ModelError("is an SDXL refiner, which has no LoRA training support here", where=where,
                         fix="Train on the SDXL base model instead.")
    if not any(key.startswith(UNET_PREFIX) for key in shapes):
        raise ModelError("has no UNet weights (model.diffusion_model.*); it is not a full SD checkpoint",
                         where=where, fix="Pass a full SD 1.x, SD 2.x or SDXL checkpoint (no LoRA or VAE).")
    if shapes.get(_CONV_IN, (0, 4))[1] != 4:
        raise ModelError("is an inpainting or other special UNet (its input is not 4 latent channels)",
                         where=where, fix="Train on the family's base text-to-image model.")
    for family, marker in _MARKERS:
        if marker in shapes:
            return family
    raise ModelError("has no text encoder weights that SD 1.x, SD 2.x or SDXL use", where=where,
                     fix="Pass a checkpoint that includes its text encoder(s), or a diffusers folder.")


def load_single_file(path: str | Path, base_config: str = "", allow_pickle: bool = False, dtype=None):
    """Build the diffusers pipeline of a single-file checkpoint, offline; returns (pipe, family)."""
    import diffusers

    path = Path(path)
    shapes = read_shapes(path, allow_pickle)
    family = detect_family(shapes, where=str(path))
    missing = [p for p in (UNET_PREFIX, VAE_PREFIX) if not any(k.startswith(p) for k in shapes)]
    if missing:
        raise ModelError(f"has no weights under {', '.join(missing)}", where=str(path),
                         fix="Use a checkpoint that includes its VAE (most do), or a diffusers folder.")
    pipeline_class = getattr(diffusers, _PIPELINES[family])
    extra = {"add_watermarker": False} if family == "sdxl" else {}
    with tempfile.TemporaryDirectory() as scratch:
        config = base_config or str(_config_folder(shapes, family, Path(scratch), where=str(path)))
        if Path(config).is_dir():
            _check_config_folder(Path(config), family)
        try:
            pipe = pipeline_class.from_single_file(str(path), config=config, local_files_only=True,
                                                   torch_dtype=dtype, **extra)
        except (OSError, ValueError) as err:
            raise ModelError(f"could not be loaded with the configs from {config}: {err}", where=str(path),
                             fix="Pass --base-config DIR: a diffusers folder of this architecture.") from err
    return pipe, family


def _config_folder(shapes: dict, family: str, scratch: Path, where: str) -> Path:
    """The shipped configs of the real family, or the tiny model's own when the file is a tiny model."""
    width = shapes[_CONV_IN][0]
    if width == _REAL_WIDTH:
        folder = scratch / family
        shutil.copytree(ASSETS / family, folder)
        for tokenizer in folder.glob("tokenizer*"):
            write_clip_vocab(tokenizer)
        return folder
    from trainer.models.tiny import TINY_RESOLUTION, build_tiny_pipeline

    tiny = build_tiny_pipeline(family) if family in TINY_RESOLUTION else None
    if tiny is not None and tiny.unet.config.block_out_channels[0] == width:
        folder = scratch / f"tiny-{family}"
        write_config_folder(tiny, folder)
        return folder
    raise ModelError(f"has a {family} UNet {width} channels wide, not the standard {_REAL_WIDTH}; the "
                     "configs shipped with LoRA Studio do not fit it", where=where,
                     fix="Pass --base-config DIR: a diffusers folder (or hub id) with this model's configs.")


def write_config_folder(pipe, folder: Path) -> Path:
    """A diffusers folder with every config and tokenizer of `pipe` but no weights."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)
    for name in pipe.components:
        component = getattr(pipe, name)
        if component is None:
            continue
        if hasattr(component, "save_vocabulary"):
            component.save_pretrained(folder / name)
        elif hasattr(component, "save_config"):
            component.save_config(folder / name)
        else:
            component.config.save_pretrained(folder / name)
    return folder


def write_clip_vocab(folder: Path) -> None:
    """`vocab.json` + `merges.txt` of OpenAI CLIP's tokenizer (also OpenCLIP's), from its shipped BPE merges.

    The id order is CLIP's own (`clip/simple_tokenizer.py`): 256 bytes, the same with `</w>`, the merges,
    then the two special tokens; 49408 in all, as in every SD text encoder.
    """
    from trainer.models.tokenizer import _bytes_to_unicode

    with gzip.open(ASSETS / "clip" / "bpe_simple_vocab_16e6.txt.gz") as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (folder / "merges.txt").write_text(text, encoding="utf-8")


def _check_config_folder(folder: Path, family: str) -> None:
    """Name every file a single-file load of `family` still needs from `folder`."""
    needed = ["model_index.json", "unet/config.json", "vae/config.json", "scheduler/scheduler_config.json"]
    encoders = ["", "_2"] if family == "sdxl" else [""]
    for suffix in encoders:
        needed.append(f"text_encoder{suffix}/config.json")
        if not (folder / f"tokenizer{suffix}" / "tokenizer.json").is_file():
            needed += [f"tokenizer{suffix}/vocab.json", f"tokenizer{suffix}/merges.txt"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"lacks {', '.join(missing)} to load a {family} single file", where=str(folder),
                         fix="Point --base-config at a complete diffusers folder of the same model family.")
