"""Content-keyed caches of latents and text embeddings, on disk under `data.cache_dir` or in memory.

    cache = open_cache(config.data.cache_dir, "latents")
    key = latent_key(file_sha256(path), (512, 384), crop=(0, 32), flip=False, vae_id=module_identity(vae),
                     background="#ffffff")
    tensors, hit = cache.get_or_build(key, lambda: {"latents": vae_encode(pixels)})

A key is a hash of everything the entry depends on, so editing one image or one caption changes that
entry's key only; nothing is invalidated by time stamps. Each file carries a checksum of its tensors and
its own key: a file that fails either check (or does not parse) is deleted and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trainer.fileio import atomic_path

Tensors = dict[str, torch.Tensor]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the identity of an image, whatever its name or time stamp)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# Bump when the code that turns an image file into pixels changes (resizing filter, colour conversion,
# EXIF handling, normalisation): every latent cached before then is then encoded again.
PIXELS_VERSION = 1


def latent_key(image_sha256: str, bucket: tuple[int, int], crop: tuple[int, int], flip: bool,
               vae_id: str, background: str) -> str:
    """The key of one image's latents: everything that changes the pixels the VAE sees, and the VAE.

    The file's bytes (content, EXIF rotation), the bucket size it is resized to (from `data.resolution`
    and `data.bucketing`), the crop position (`data.random_crop`), the flip, the colour under transparent
    pixels (`data.background`, as RGB so '#fff' and 'white' share entries), the pixel code's version,
    and the VAE's identity (class, config, weights and their dtype: `module_identity`).
    """
    from trainer.data.images import parse_colour

    return _key(kind="latents", image=image_sha256, bucket=list(bucket), crop=list(crop), flip=bool(flip),
                vae=vae_id, background=list(parse_colour(background)), pixels=PIXELS_VERSION)


def text_key(caption: str, encoder_id: str) -> str:
    """The key of one caption's embeddings: its exact text and the text encoder (with its tokenizer)."""
    return _key(kind="text", caption=caption, encoder=encoder_id)


def module_identity(*parts) -> str:
    """A hash that names a model: each module's class, config and weights, a tokenizer's vocabulary.

    Where a model was loaded from (`_name_or_path`, often a temporary folder) and library versions are
    left out: the same weights give the same identity wherever they came from.
    """
    digest = hashlib.sha256()
    for part in parts:
        if hasattr(part, "get_vocab"):
            digest.update(type(part).__name__.encode())
            digest.update(json.dumps([sorted(part.get_vocab().items()), part.model_max_length]).encode())
        elif isinstance(part, torch.nn.Module):
            digest.update(type(part).__name__.encode())
            config = getattr(part, "config", None)
            if config is not None:
                as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
                as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_") and not k.endswith("_version")}
                digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
            for name, tensor in sorted(part.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()[:32]


def tensors_checksum(tensors: Tensors) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class MemoryCache:
    """The same interface as DiskCache, kept for the life of the process (no `data.cache_dir`)."""

    def __init__(self) -> None:
        self._entries: dict[str, Tensors] = {}
        self.hits = self.misses = 0

    def get(self, key: str) -> Tensors | None:
        return self._entries.get(key)

    def put(self, key: str, tensors: Tensors) -> None:
        self._entries[key] = {name: t.detach().to("cpu").clone() for name, t in tensors.items()}

    def get_or_build(self, key: str, build: Callable[[], Tensors]) -> tuple[Tensors, bool]:
        """(tensors, True) from the cache, or (build(), False) after storing what `build` made."""
        found = self.get(key)
        if found is not None:
            self.hits += 1
            return found, True
        self.misses += 1
        tensors = build()
        self.put(key, tensors)
        return tensors, False


class DiskCache(MemoryCache):
    """One safetensors file per key under `folder`, written atomically and checked on every read."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.rebuilt: list[Path] = []
        """Files that failed their check and were deleted (to be rebuilt)."""

    def path_for(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> Tensors | None:
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            with safe_open(path, framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            if metadata.get("key") != key or metadata.get("sha256") != tensors_checksum(tensors):
                raise ValueError("checksum mismatch")
        except (SafetensorError, OSError, ValueError, RuntimeError):
            path.unlink(missing_ok=True)
            self.rebuilt.append(path)
            return None
        return tensors

    def put(self, key: str, tensors: Tensors) -> None:
        tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        path = self.path_for(key)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"key": key, "sha256": tensors_checksum(tensors)})


def open_cache(cache_dir: str | Path, kind: str) -> MemoryCache:
    """A DiskCache at `<cache_dir>/<kind>` when `cache_dir` is set, else a MemoryCache."""
    return DiskCache(Path(cache_dir) / kind) if str(cache_dir).strip() else MemoryCache()
