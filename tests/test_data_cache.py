"""Content-keyed latent and text caches: exact invalidation, corruption detected and rebuilt."""

from __future__ import annotations

import copy

import pytest
import torch
from data_files import write_image

from trainer.data.cache import (
    DiskCache,
    MemoryCache,
    file_sha256,
    latent_key,
    module_identity,
    open_cache,
    text_key,
)
from trainer.data.images import open_image, prepare_image


@pytest.fixture(scope="module")
def vae(tiny_pipe):
    return tiny_pipe.vae


def encode(vae, path):
    pixels, crop = prepare_image(open_image(path), 64, 64)
    with torch.no_grad():
        return {"mean": vae.encode(pixels.unsqueeze(0)).latent_dist.mean[0]}, crop


def keys_for(paths, vae_id):
    return [latent_key(file_sha256(p), (64, 64), (0, 0), False, vae_id, "#ffffff") for p in paths]


def test_editing_one_image_invalidates_exactly_its_entry(tmp_path, vae):
    paths = [write_image(tmp_path / "data" / f"{n}.png", 64, 64, seed=n) for n in range(3)]
    cache = open_cache(tmp_path / "cache", "latents")
    assert isinstance(cache, DiskCache)
    vae_id = module_identity(vae)
    for path, key in zip(paths, keys_for(paths, vae_id), strict=True):
        cache.get_or_build(key, lambda p=path: encode(vae, p)[0])
    assert cache.misses == 3 and len(list((tmp_path / "cache" / "latents").rglob("*.safetensors"))) == 3

    write_image(paths[1], 64, 64, seed=99)  # the user edits one image
    fresh = DiskCache(tmp_path / "cache" / "latents")
    results = [fresh.get_or_build(key, lambda p=path: encode(vae, p)[0])
               for path, key in zip(paths, keys_for(paths, vae_id), strict=True)]
    assert [hit for _, hit in results] == [True, False, True]
    assert torch.equal(results[0][0]["mean"], encode(vae, paths[0])[0]["mean"])
    assert torch.equal(results[1][0]["mean"], encode(vae, paths[1])[0]["mean"])


def test_key_covers_bucket_crop_flip_background_and_the_vae(vae):
    base = latent_key("abc", (64, 64), (0, 0), False, module_identity(vae), "white")
    variants = {base, latent_key("abc", (64, 128), (0, 0), False, "v", "white"),
                latent_key("abc", (64, 64), (8, 0), False, "v", "white"),
                latent_key("abc", (64, 64), (0, 0), True, "v", "white"),
                latent_key("abd", (64, 64), (0, 0), False, "v", "white"),
                latent_key("abc", (64, 64), (0, 0), False, "v", "black"),
                latent_key("abc", (64, 64), (0, 0), False, "v", "white")}
    assert len(variants) == 7
    assert latent_key("abc", (64, 64), (0, 0), False, "v", "white") == latent_key(
        "abc", (64, 64), (0, 0), False, "v", "#FFFFFF"), "the same colour spelled two ways shares entries"
    other = type(vae).from_config(vae.config)
    assert module_identity(other) != module_identity(vae), "different weights, different identity"
    assert module_identity(copy.deepcopy(vae).half()) != module_identity(vae), "fp16 weights encode otherwise"
    assert text_key("a cat", "clip-1") != text_key("a cat, red", "clip-1") != text_key("a cat", "clip-2")


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate", "garbage", "wrong-key"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(tmp_path, damage):
    cache = DiskCache(tmp_path)
    key, other = text_key("a red cat", "enc"), text_key("a blue dog", "enc")
    tensors = {"hidden": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)}
    cache.put(key, tensors)
    path = cache.path_for(key)
    data = bytearray(path.read_bytes())
    if damage == "flip-a-byte":
        data[-3] ^= 0x40
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 10]))
    elif damage == "garbage":
        path.write_bytes(b"\xff" * 40)
    else:
        cache.put(other, {"hidden": torch.zeros(1)})
        path.write_bytes(cache.path_for(other).read_bytes())  # a file under the wrong name
    assert cache.get(key) is None and not path.exists() and cache.rebuilt == [path]
    rebuilt, hit = cache.get_or_build(key, lambda: tensors)
    assert not hit and torch.equal(DiskCache(tmp_path).get(key)["hidden"], tensors["hidden"])


def test_memory_cache_when_no_cache_dir():
    cache = open_cache("", "text")
    assert type(cache) is MemoryCache
    _, hit = cache.get_or_build("k", lambda: {"x": torch.ones(2)})
    again, hit2 = cache.get_or_build("k", lambda: {"x": torch.zeros(2)})
    assert (hit, hit2) == (False, True) and torch.equal(again["x"], torch.ones(2))
