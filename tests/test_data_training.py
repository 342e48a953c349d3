"""The data package inside training: the doctor gates `lora-studio train`, buckets and disk caches in the loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import truncated_png, write_image
from safetensors.torch import load

from trainer.config import DataConfig, TrainConfig
from trainer.data import scan_dataset
from trainer.data.cache import DiskCache, file_sha256, latent_key, module_identity
from trainer.examples import ExampleSet


@pytest.fixture(scope="module")
def base():
    from trainer.models import load_base

    return load_base(TrainConfig().model)


def latents_of(examples: ExampleSet) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {ex.item.image_path.name: (ex.latent_mean, ex.flipped_mean) for ex in examples.examples}


def cache_files(folder: Path) -> set[Path]:
    return set(folder.rglob("*.safetensors"))


def test_buckets_flips_and_disk_caches_in_the_example_set(tmp_path, base):
    root = tmp_path / "ds"
    write_image(root / "wide.png", 192, 64, seed=1, caption="a wide red stripe")
    write_image(root / "tall.png", 64, 192, seed=2, caption="a tall blue stripe")
    write_image(root / "square.png", 128, 128, seed=3, caption="a green square")
    data = DataConfig(path=str(root), cache_dir=str(tmp_path / "cache"), flip=True)

    def build():
        return ExampleSet(base, scan_dataset(data), data, 128, torch.device("cpu"), torch.float32, cache_text=True)

    first = build()
    assert {ex.item.image_path.name: ex.size for ex in first.examples} == {
        "wide.png": (192, 64), "tall.png": (64, 192), "square.png": (128, 128)}
    for ex in first.examples:
        assert tuple(ex.latent_mean.shape[-2:]) == (ex.size[1] // 8, ex.size[0] // 8)
    latent_files = cache_files(tmp_path / "cache" / "latents")
    assert len(latent_files) == 6 and len(cache_files(tmp_path / "cache" / "text")) == 3, "3 images x 2 flips"
    for mean, flipped in latents_of(first).values():
        assert not torch.equal(mean, flipped)
    rng, example = np.random.default_rng(0), first.examples[0]
    mirrored = sum(first._oriented(example, rng).latent_mean is example.flipped_mean for _ in range(40))
    assert 8 < mirrored < 32, "each step trains either side, chosen by the step's seeded rng"

    again = latents_of(build())
    for name, (mean, flipped) in latents_of(first).items():
        assert torch.equal(again[name][0], mean) and torch.equal(again[name][1], flipped), name
    assert cache_files(tmp_path / "cache" / "latents") == latent_files, "a second run only reads"

    write_image(root / "tall.png", 64, 192, seed=22)  # edit one image: exactly its two entries are new
    edited = latents_of(build())
    assert len(cache_files(tmp_path / "cache" / "latents") - latent_files) == 2
    assert torch.equal(edited["wide.png"][0], again["wide.png"][0])
    assert not torch.equal(edited["tall.png"][0], again["tall.png"][0])

    # Damage a file this build reads (wide.png's unflipped latents), not one of the stale ones: it must be
    # detected by its checksum and encoded again, never used.
    wide = next(ex for ex in first.examples if ex.item.image_path.name == "wide.png")
    key = latent_key(file_sha256(wide.item.image_path), wide.size, wide.crop_top_left, False,
                     module_identity(base.pipe.vae), data.background)
    victim = DiskCache(tmp_path / "cache" / "latents").path_for(key)
    assert victim in latent_files
    good = victim.read_bytes()
    damaged = good[:-7] + b"garbage"
    victim.write_bytes(damaged)
    repaired = latents_of(build())
    rebuilt = victim.read_bytes()
    assert rebuilt != damaged, "the damaged file was detected and written again"
    assert load(rebuilt).keys() == load(good).keys()
    assert all(torch.equal(load(rebuilt)[k], load(good)[k]) for k in load(good)), "with the same latents"
    for name in repaired:
        assert torch.equal(repaired[name][0], edited[name][0]) and torch.equal(repaired[name][1], edited[name][1])


def test_changing_the_background_encodes_transparent_images_again(tmp_path, base):
    from PIL import Image

    root = tmp_path / "ds"
    root.mkdir()
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[16:48, 16:48] = (200, 30, 30, 255)  # an opaque red square on fully transparent pixels
    Image.fromarray(rgba, "RGBA").save(root / "logo.png")
    (root / "logo.txt").write_text("a red square", encoding="utf-8")

    def latents(background, cache_dir):
        data = DataConfig(path=str(root), cache_dir=str(cache_dir), background=background)
        examples = ExampleSet(base, scan_dataset(data), data, 64, torch.device("cpu"), torch.float32, False)
        return examples.examples[0].latent_mean

    cache = tmp_path / "cache"
    white = latents("#ffffff", cache)
    assert len(cache_files(cache)) == 1
    black = latents("black", cache)
    assert len(cache_files(cache)) == 2, "a new background is a new entry"
    assert not torch.equal(white, black)
    assert torch.equal(black, latents("black", ""))
    assert torch.equal(latents("#000", cache), black) and len(cache_files(cache)) == 2, "same colour: reused"


def test_train_refuses_a_bad_dataset_and_writes_nothing_then_skips(tmp_path, capsys):
    from trainer.cli import main

    root = tmp_path / "ds"
    write_image(root / "ok.png", 64, 64, seed=2, caption="a green square")
    truncated_png(root / "broken.png")
    out = tmp_path / "out"
    args = ["train", "--data", str(root), "--output", str(out), "--steps", "1", "--resolution", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "broken.png is not a readable image (truncated PNG" in err and "REFUSED" in err
    assert "--skip-bad-images" in err and not out.exists()

    assert main([*args, "--skip-bad-images"]) == 0
    err = capsys.readouterr().err
    assert f"skipped (data.skip_bad_images): {root / 'broken.png'}" in err
    assert (out / "lora.safetensors").is_file() and (out / "lora.peft.safetensors").is_file()


def test_cached_latents_and_captions_are_packed_one_block_per_bucket(tmp_path, base):
    """Each bucket's latent distributions and all caption embeddings live in preallocated blocks (no small
    long-lived tensor per image between the encoders' activations), with the values a direct encode gives."""
    root = tmp_path / "ds"
    for index in range(5):
        write_image(root / f"wide{index}.png", 192, 64, seed=index, caption=f"a wide stripe number {index}")
    for index in range(3):
        write_image(root / f"square{index}.png", 128, 128, seed=10 + index, caption=f"a square number {index}")
    for cache_dir in ("", str(tmp_path / "cache"), str(tmp_path / "cache")):  # in memory, disk cold, disk warm
        data = DataConfig(path=str(root), flip=True, cache_dir=cache_dir)
        examples = ExampleSet(base, scan_dataset(data), data, 128, torch.device("cpu"), torch.float32, True)
        by_size: dict[tuple[int, int], set[int]] = {}
        for ex in examples.examples:
            for tensor in (ex.latent_mean, ex.latent_std, ex.flipped_mean, ex.flipped_std):
                by_size.setdefault(ex.size, set()).add(tensor.untyped_storage().data_ptr())
        assert {size: len(ptrs) for size, ptrs in by_size.items()} == {(192, 64): 2, (128, 128): 2}, \
            "one block for the means and one for the stds of each bucket"
        assert len({v.untyped_storage().data_ptr() for entry in examples.text_cache.values()
                    for v in entry.values()}) == 1
        with torch.no_grad():
            for ex in examples.examples:
                direct = examples._encode_pixels(base.pipe.vae, examples._load(ex.item, ex.size).pixels)
                assert torch.equal(direct["mean"], ex.latent_mean) and torch.equal(direct["std"], ex.latent_std)
            direct_text = base.family.encode_text(base.pipe, ["a square number 1"])
        for key, value in direct_text.items():
            assert torch.allclose(value, examples.text_cache["a square number 1"][key], atol=1e-6), key
        # mean and std, float32, 4 channels: 5 wide images x 2 flips at 8 x 24, 3 squares x 2 at 16 x 16
        assert examples.latent_store.nbytes() == 2 * 4 * 4 * (10 * 8 * 24 + 6 * 16 * 16)


def test_packed_store_refuses_more_entries_than_slots():
    from trainer.data.packed_store import PackedStore

    store = PackedStore({"a": 2})
    first = store.keep("a", {"x": torch.ones(3)})
    second = store.keep("a", {"x": torch.full((3,), 2.0)})
    assert first["x"].untyped_storage().data_ptr() == second["x"].untyped_storage().data_ptr()
    assert torch.equal(first["x"], torch.ones(3)) and torch.equal(second["x"], torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="2 slots"):
        store.keep("a", {"x": torch.zeros(3)})
