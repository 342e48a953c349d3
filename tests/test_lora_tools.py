"""merge, resize and extract on the tiny SD 1.x and SDXL models, through the CLI, checked by the images they give.

Two seeded LoRAs (one with text-encoder layers, ranks 4 and 8) are shared by the module. Images are two
denoising steps at 64 px without guidance, compared as latents: a merged, resized or extracted model must give
the image of the LoRAs it came from (within float32 rounding), and load in the pool and in a plain diffusers
pipeline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families_helpers import tiny_pipe
from pool_loras import write_lora
from safetensors.torch import save_file

from trainer.cli import main
from trainer.config import ModelConfig
from trainer.errors import LoraFileError, StudioError
from trainer.generate import AdapterPool, plan_lora, read_lora_file, render
from trainer.lora_tools.merge import merge_loras
from trainer.lora_tools.resize import resize_lora
from trainer.models.loading import load_base

QUICK = dict(steps=2, guidance=1.0, width=64, height=64, output_type="latent")
MIX = {"a": 0.7, "b": 0.4}
ATOL = 1e-4  # float32 rounding of W + s * B @ A against the LoRA layers' x @ W + s * x @ A @ B: ~2e-6 seen


def latents(pool, strengths, prompt="a red fox"):
    return pool.generate(prompt, seed=3, strengths=strengths, **QUICK)[0].numpy()


def plain_pipeline_latents(base_model, lora):
    """A fresh diffusers pipeline with the file loaded by `load_lora_weights` alone (no pool)."""
    pipe = load_base(ModelConfig(base_model=base_model)).pipe
    pipe.load_lora_weights(str(lora))
    return render(pipe, "a red fox", seed=3, **QUICK)[0].numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-tools")
    pipe = tiny_pipe("sd15")  # read only: write_lora takes layer names and sizes from it
    return {"dir": folder,
            "a": write_lora(pipe, folder / "a.safetensors", seed=1, fmt="kohya", text_encoder=True),
            "b": write_lora(pipe, folder / "b.safetensors", seed=2, fmt="kohya", rank=8)}


@pytest.fixture(scope="module")
def pool(files):
    pool = AdapterPool("tiny")
    pool.load("a", files["a"])
    pool.load("b", files["b"])
    return pool


@pytest.fixture(scope="module")
def merged(files):
    out = files["dir"] / "merged.safetensors"
    assert main(["merge", "tiny", f"{files['a']}:0.7", f"{files['b']}:0.4", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def merged_pool(merged):
    return AdapterPool(str(merged))  # loads as --base-model merged.safetensors does


def test_merged_single_file_gives_the_image_of_the_loras_at_their_strengths(pool, merged, merged_pool):
    assert merged_pool.family.name == "sd15"
    want = latents(pool, MIX)
    assert np.abs(latents(merged_pool, {}) - want).max() < ATOL
    assert np.abs(latents(pool, {}) - want).max() > 0.1  # the LoRAs matter: this is not the base image
    meta = read_lora_file_metadata(merged)
    assert [m["strength"] for m in json.loads(meta["lora_studio_merged"])] == [0.7, 0.4]


def read_lora_file_metadata(path):
    from trainer.export import read_lora_metadata

    return read_lora_metadata(path)


def test_merged_diffusers_folder_loads_and_matches(pool, files):
    out = files["dir"] / "merged-folder"
    report = merge_loras("tiny", [(files["b"], 1.0)], out)
    assert report.layout == "diffusers" and (out / "model_index.json").is_file()
    assert np.abs(latents(AdapterPool(str(out)), {}) - latents(pool, {"b": 1.0})).max() < ATOL


def test_fused_previews_equal_unfused_and_unfusing_gives_the_base_back_exactly(pool):
    base = latents(pool, {})
    layer = pool.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    original = layer.get_base_layer().weight.detach().clone()
    for mix in (MIX, {"b": 0.5}):
        unfused = latents(pool, mix)
        fused = pool.generate("a red fox", seed=3, strengths=mix, fuse=True, **QUICK)[0].numpy()
        assert pool.fused == tuple(mix.items()) and layer.merged
        assert np.abs(fused - unfused).max() < ATOL
        again = pool.generate("a red fox", seed=3, strengths=mix, fuse=True, **QUICK)[0].numpy()
        assert np.array_equal(fused, again)  # the same mix stays fused: nothing is merged twice
    assert np.array_equal(pool.generate("a red fox", seed=3, strengths={"a": 0.0}, fuse=True, **QUICK)[0].numpy(),
                          base)
    assert pool.fused is None and not layer.merged
    assert torch.equal(layer.get_base_layer().weight, original)  # restored bit for bit, not W + d - d
    pool.generate("a red fox", seed=3, strengths=MIX, fuse=True, **QUICK)
    assert np.array_equal(latents(pool, {}), base)  # an unfused call after a fused one


def test_resize_at_full_rank_keeps_the_image_and_lower_rank_reports_what_is_lost(pool, files, capsys):
    full, low = files["dir"] / "b-r8.safetensors", files["dir"] / "b-r2.safetensors"
    assert main(["resize", str(files["b"]), "--rank", "8", "--out", str(full)]) == 0
    assert "kept 100.00% of the update" in capsys.readouterr().err
    report = resize_lora(files["b"], 2, low)
    assert report.overall < 0.9 and all(kept < 1 for kept in report.layers.values())
    assert len(report.layers) == 128
    lora = read_lora_file(low)
    assert lora.metadata["ss_network_dim"] == "2" and lora.metadata["ss_network_alpha"] == "2"
    assert json.loads(lora.metadata["lora_studio_resized"])["kept"] == pytest.approx(report.overall, abs=1e-6)
    assert {float(t) for k, t in lora.tensors.items() if k.endswith(".alpha")} == {2.0}  # 8 * 2/8: scale 1
    assert {t.shape[0] for k, t in lora.tensors.items() if k.endswith("lora_down.weight")} == {2}
    pool.load("b_r8", full)
    pool.load("b_r2", low)
    assert np.abs(latents(pool, {"b_r8": 1.0}) - latents(pool, {"b": 1.0})).max() < ATOL
    low_image = latents(pool, {"b_r2": 1.0})
    assert np.abs(plain_pipeline_latents("tiny", low) - low_image).max() < ATOL


def test_resize_to_a_kept_share_picks_each_layers_rank(pool, files):
    out = files["dir"] / "b-keep.safetensors"
    assert main(["resize", str(files["b"]), "--rank", "8", "--keep", "0.9", "--out", str(out)]) == 0
    lora = read_lora_file(out)
    ranks = {t.shape[0] for k, t in lora.tensors.items() if k.endswith("lora_down.weight")}
    assert len(ranks) > 1 and max(ranks) < 8  # each layer's own rank, below the cap
    assert json.loads(lora.metadata["lora_studio_resized"])["kept"] >= 0.9
    assert lora.metadata["ss_network_alpha"] == "Dynamic"
    plan = plan_lora(pool.pipe, lora)  # the pool's own checks: every layer matches, at its size
    assert len(plan.modules) == 128 and plan.rank == max(ranks) and not plan.unmatched


def test_resize_keeps_every_layer_name_text_encoder_included(files):
    out = files["dir"] / "a-r2.safetensors"
    resize_lora(files["a"], 2, out)
    stems = {k.rsplit(".", 2)[0] for k in read_lora_file(files["a"]).tensors if k.endswith("lora_down.weight")}
    assert {k.rsplit(".", 2)[0] for k in read_lora_file(out).tensors if k.endswith("lora_down.weight")} == stems
    assert len(stems) == 128 + 16 and any(stem.startswith("lora_te_") for stem in stems)


def test_extract_from_the_merged_model_recovers_its_image(pool, merged, merged_pool, files, capsys):
    out = files["dir"] / "extracted.safetensors"
    assert main(["extract", str(merged), "tiny", "--rank", "12", "--out", str(out)]) == 0
    assert "kept 100.00% of the update" in capsys.readouterr().err  # 4 + 8 ranks fit in 12
    lora = read_lora_file(out)
    assert lora.metadata["ss_network_dim"] == "12" and lora.metadata["ss_base_model_version"] == "sd_v1"
    assert any(k.startswith("lora_te_") for k in lora.tensors)  # the text encoder differed, so it is there
    assert pool.load("extracted", out).layers == 128 + 16
    want = latents(merged_pool, {})
    assert np.abs(latents(pool, {"extracted": 1.0}) - want).max() < ATOL
    assert np.abs(plain_pipeline_latents("tiny", out) - want).max() < ATOL


def test_sdxl_merge_and_extract(tmp_path):
    pipe = tiny_pipe("sdxl")
    # half the projections each (loading LoRA layers is most of this test's time); a also has text-encoder layers
    a = write_lora(pipe, tmp_path / "a.peft.safetensors", seed=1, text_encoder=True, targets=("to_q", "to_k"))
    b = write_lora(pipe, tmp_path / "b.peft.safetensors", seed=2, rank=8, targets=("to_v", "to_out.0"))
    pool = AdapterPool("tiny-sdxl")
    pool.load("a", a)
    pool.load("b", b)
    want = latents(pool, MIX)
    merged = tmp_path / "merged.safetensors"
    assert main(["merge", "tiny-sdxl", f"{a}:0.7", f"{b}:0.4", "--out", str(merged)]) == 0
    merged_pool = AdapterPool(str(merged))
    assert merged_pool.family.name == "sdxl"
    assert np.abs(latents(merged_pool, {}) - want).max() < ATOL
    out = tmp_path / "extracted.safetensors"
    assert main(["extract", str(merged), "tiny-sdxl", "--rank", "12", "--out", str(out)]) == 0
    keys = read_lora_file(out).tensors
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys) and any(k.startswith("lora_te1_") for k in keys)
    assert not any(k.startswith("lora_te2_") for k in keys)  # the second encoder did not differ
    pool.load("extracted", out)
    assert np.abs(latents(pool, {"extracted": 1.0}) - want).max() < ATOL


def test_other_network_types_are_refused_by_name(files, tmp_path):
    loha = tmp_path / "loha.safetensors"
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{stem}.hada_w1_a": torch.ones(32, 4), f"{stem}.hada_w1_b": torch.ones(4, 32),
               f"{stem}.hada_w2_a": torch.ones(32, 4), f"{stem}.hada_w2_b": torch.ones(4, 32),
               f"{stem}.alpha": torch.tensor(4.0)}, loha)
    for call in (lambda: resize_lora(loha, 2, tmp_path / "x.safetensors"),
                 lambda: merge_loras("tiny", [(loha, 1.0)], tmp_path / "x.safetensors")):
        with pytest.raises(LoraFileError, match="is a LoHa .*plain LoRA") as caught:
            call()
        assert str(loha) in str(caught.value)
    peft = write_lora(tiny_pipe("sd15"), tmp_path / "p.peft.safetensors", seed=1)
    with pytest.raises(LoraFileError, match="diffusers/PEFT keys; resize reads kohya"):
        resize_lora(peft, 2, tmp_path / "y.safetensors")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_fuse_is_refused_on_a_compiled_pool_and_merge_keeps_an_existing_output(files):
    with pytest.raises(StudioError, match="(?i)fuse for speed is for an uncompiled pool"):
        AdapterPool("tiny", compile=True).generate("x", fuse=True, **QUICK)
    with pytest.raises(StudioError, match="exists already.*--overwrite"):
        merge_loras("tiny", [(files["b"], 1.0)], files["a"])
