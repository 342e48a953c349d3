"""The adapter pool on the tiny model: exact strengths, swaps and mixes, both key formats, the cap, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pool_loras import write_lora

from trainer.errors import LoraFileError, StudioError
from trainer.generate import AdapterPool, read_lora_file, render

# One denoising step without classifier-free guidance, compared as latents (before the VAE): exact and cheap.
QUICK = dict(steps=1, guidance=1.0, width=64, height=64, output_type="latent")


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_pipe):
    folder = tmp_path_factory.mktemp("loras")
    return {
        "a": write_lora(tiny_pipe, folder / "a.peft.safetensors", seed=1),
        "a_kohya": write_lora(tiny_pipe, folder / "a.safetensors", seed=1, fmt="kohya"),
        "b": write_lora(tiny_pipe, folder / "b.safetensors", seed=2, fmt="kohya", rank=8),
        "te": write_lora(tiny_pipe, folder / "te.safetensors", seed=3, fmt="kohya", text_encoder=True),
    }


@pytest.fixture(scope="module")
def pool(loras):
    pool = AdapterPool("tiny")
    for name, path in loras.items():
        pool.load(name, path)
    return pool


def image(pool, strengths, prompt="a red fox", seed=3):
    return pool.generate(prompt, seed=seed, strengths=strengths, **QUICK)[0].numpy()


def test_strength_zero_is_exactly_the_base_image(pool):
    from trainer.models.tiny import load_tiny_pipeline

    fresh = load_tiny_pipeline("tiny")  # a pipeline that never saw a LoRA
    base = render(fresh, "a red fox", seed=3, **QUICK)[0].numpy()
    assert np.array_equal(image(pool, {}), base)
    assert np.array_equal(image(pool, {"a": 0.0}), base)
    assert np.array_equal(image(pool, {"a": 0.0, "b": 0.0, "te": 0.0}), base)
    assert np.abs(image(pool, {"a": 1.0}) - base).max() > 0.01
    as_png = pool.generate("a red fox", seed=3, strengths={"a": 0.0}, steps=1, guidance=1.0, width=64, height=64)
    plain = render(fresh, "a red fox", seed=3, steps=1, guidance=1.0, width=64, height=64)
    assert as_png[0].tobytes() == plain[0].tobytes()


def test_a_then_b_then_a_gives_the_a_image_back_exactly(pool):
    first = image(pool, {"a": 1.0})
    other = image(pool, {"b": 1.0})
    again = image(pool, {"a": 1.0})
    assert np.array_equal(first, again)
    assert pool.last_swap_s is not None and 0 <= pool.last_swap_s < 5
    assert np.abs(first - other).max() > 0.01


def test_mix_at_one_and_zero_equals_the_first_alone(pool):
    alone = image(pool, {"a": 1.0})
    assert np.array_equal(image(pool, {"a": 1.0, "b": 0.0}), alone)
    half = image(pool, {"a": 0.5, "b": 0.5})
    assert np.abs(half - alone).max() > 0.01 and np.abs(half - image(pool, {"b": 1.0})).max() > 0.01


def test_strength_changes_the_image_without_reloading_the_base(pool):
    weight = pool.pipe.unet.conv_in.weight
    pointer = weight.data_ptr()
    images = [image(pool, {"a": s}) for s in (0.4, 0.7, 1.0)]
    assert pool.pipe.unet.conv_in.weight is weight and weight.data_ptr() == pointer
    assert np.abs(images[0] - images[1]).max() > 1e-4 and np.abs(images[1] - images[2]).max() > 1e-4


def test_kohya_and_peft_files_of_one_lora_give_the_same_image(pool):
    assert pool.report("a").format == "diffusers" and pool.report("a_kohya").format == "kohya"
    assert np.array_equal(image(pool, {"a": 0.8}), image(pool, {"a_kohya": 0.8}))


def test_text_encoder_layers_load_and_count(pool):
    report = pool.report("te")
    assert report.layers == 128 + 16  # 32 UNet attentions x 4 projections, 4 CLIP layers x 4 projections
    assert np.abs(image(pool, {"te": 1.0}) - image(pool, {})).max() > 0.01


def test_unmatched_keys_refuse_the_file_unless_partial_is_allowed_then_are_reported(tmp_path, tiny_pipe):
    import torch

    extra = {"lora_unet_not_a_block_to_q.lora_down.weight": torch.ones(4, 8),
             "lora_unet_not_a_block_to_q.lora_up.weight": torch.ones(8, 4),
             "lora_unet_not_a_block_to_q.alpha": torch.tensor(4.0)}
    path = write_lora(tiny_pipe, tmp_path / "odd.safetensors", seed=5, fmt="kohya", extra=extra)
    clean = write_lora(tiny_pipe, tmp_path / "clean.safetensors", seed=5, fmt="kohya")
    pool = AdapterPool("tiny")
    with pytest.raises(LoraFileError, match=r"has 2 keys that match no layer .*not.a.block.*allow_partial") as caught:
        pool.load("odd", path)
    assert str(path) in str(caught.value) and pool.loaded() == [] and not any(pool.pipe.get_list_adapters().values())
    report = pool.load("odd", path, allow_partial=True)
    assert len(report.unmatched) == 2 and all("not" in key for key in report.unmatched)
    assert report.layers == 128
    assert pool.load("clean", clean).unmatched == []
    assert np.array_equal(image(pool, {"odd": 1.0}), image(pool, {"clean": 1.0}))
    pool.unload("odd")
    pool.unload("clean")


def test_least_recently_used_adapters_are_evicted_at_the_cap(loras):
    pool = AdapterPool("tiny", max_loaded=2)
    pool.load("a", loras["a"])
    pool.load("b", loras["b"])
    pool.generate("x", strengths={"a": 1.0}, **QUICK)  # a is now the most recently used
    pool.load("te", loras["te"])
    assert pool.loaded() == ["a", "te"]
    assert sorted(pool.pipe.get_list_adapters()["unet"]) == ["a", "te"]
    with pytest.raises(StudioError, match="(?i)no LoRA named 'b'"):
        pool.generate("x", strengths={"b": 1.0})


def test_byte_cap_evicts_until_the_new_lora_fits(loras):
    size_a = read_lora_file(loras["a"]).nbytes
    pool = AdapterPool("tiny", max_bytes=int(size_a * 1.5))
    pool.load("a", loras["a"])
    pool.load("a2", loras["a_kohya"])
    assert pool.loaded() == ["a2"]


def test_threads_share_the_pool_and_each_gets_its_own_strengths(pool):
    wanted = {0.0: image(pool, {}), 1.0: image(pool, {"a": 1.0})}
    results, errors = {}, []

    def worker(strength, key):
        try:
            results[key] = image(pool, {"a": strength})
        except Exception as err:  # collected and re-raised in the test thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s, i)) for i, s in enumerate([0.0, 1.0, 0.0, 1.0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, strength in enumerate([0.0, 1.0, 0.0, 1.0]):
        assert np.array_equal(results[i], wanted[strength])


def test_unknown_names_and_bad_names_are_refused(pool, loras):
    with pytest.raises(StudioError, match="(?i)no LoRA named 'nope'"):
        pool.generate("x", strengths={"nope": 1.0})
    with pytest.raises(StudioError, match="letters, digits"):
        pool.load("my.lora", loras["a"])
