"""The generate and grid commands, grids themselves, and samples during training made by the same code."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pool_loras import write_lora

from trainer.errors import LoraFileError
from trainer.generate import AdapterPool, compose_grid
from trainer.generate.grid import cell_box

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_pipe):
    return write_lora(tiny_pipe, tmp_path_factory.mktemp("cli") / "ink.safetensors", seed=1, fmt="kohya")


def test_generate_writes_the_image_the_pool_makes(lora, tmp_path):
    out = tmp_path / "out.png"
    done = cli("generate", "--base-model", "tiny", "--lora", f"{lora}:0.7", "--prompt", "a red fox",
               "--seed", 5, "--steps", 2, "--width", 64, "--height", 64, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "kohya keys, rank 4, 128 layers" in done.stderr
    pool = AdapterPool("tiny")
    pool.load("ink", lora)
    wanted = pool.generate("a red fox", seed=5, steps=2, width=64, height=64, strengths={"ink": 0.7})[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(wanted))


def test_a_bad_lora_exits_non_zero_naming_the_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    done = cli("generate", "--lora", bad, "--prompt", "x", "--steps", 1, "--out", tmp_path / "o.png")
    assert done.returncode != 0
    assert str(bad) in done.stderr and "not a safetensors file" in done.stderr
    assert not (tmp_path / "o.png").exists()


def test_a_partial_lora_is_refused_with_its_keys_unless_allowed_in_the_cli_and_the_ui(tiny_pipe, tmp_path):
    import torch

    from app.generate_tab import add_lora
    from app.studio import Studio

    extra = {"lora_unet_not_a_block_to_q.lora_down.weight": torch.ones(4, 8),
             "lora_unet_not_a_block_to_q.lora_up.weight": torch.ones(8, 4)}
    odd = write_lora(tiny_pipe, tmp_path / "odd.safetensors", seed=2, fmt="kohya", extra=extra)
    args = ["generate", "--lora", odd, "--prompt", "x", "--steps", 1, "--width", 64, "--height", 64]
    refused = cli(*args, "--out", tmp_path / "refused.png")
    assert refused.returncode == 2 and not (tmp_path / "refused.png").exists()
    assert f"{odd} has 2 keys that match no layer" in refused.stderr and "not.a.block.to_q" in refused.stderr
    assert "--allow-partial" in refused.stderr
    allowed = cli(*args, "--allow-partial", "--out", tmp_path / "allowed.png")
    assert allowed.returncode == 0, allowed.stderr
    assert "warning:" in allowed.stderr and "2 keys match no layer" in allowed.stderr
    studio = Studio(tmp_path / "home")
    with pytest.raises(LoraFileError, match="has 2 keys that match no layer"):
        add_lora(studio, str(odd), "odd")  # the tab shows this message as its "**Error:**" line
    assert "odd" not in studio.lora_files()


def test_grid_command_lays_strengths_across_and_prompts_down(lora, tmp_path):
    out = tmp_path / "grid.png"
    done = cli("grid", "--lora", lora, "--prompt", "a cat", "--prompt", "a dog", "--strengths", "0,1",
               "--seed", 3, "--steps", 1, "--guidance", 1, "--width", 64, "--height", 64, "--out", out)
    assert done.returncode == 0, done.stderr
    sheet = Image.open(out)
    assert sheet.width > 2 * 64 and sheet.height > 2 * 64
    base = AdapterPool("tiny").generate("a dog", seed=3, steps=1, guidance=1.0, width=64, height=64)[0]
    cells = [[base, base], [base, base]]
    box = cell_box(cells, ["a cat", "a dog"], row=1, col=0, title="seed 3")
    assert np.array_equal(np.asarray(sheet.convert("RGB").crop(box)), np.asarray(base))
    assert not np.array_equal(np.asarray(sheet.convert("RGB").crop(cell_box(cells, ["a cat", "a dog"], 1, 1,
                                                                              "seed 3"))), np.asarray(base))


def test_compose_grid_places_cells_and_labels():
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    rows = [[red, blue], [blue, red]]
    sheet = compose_grid(rows, ["strength 0", "strength 1"], ["a prompt", "another prompt"], title="seed 1")
    assert sheet.getpixel(cell_box(rows, ["a prompt", "another prompt"], 0, 1, "seed 1")[:2]) == (0, 0, 255)
    assert sheet.getpixel(cell_box(rows, ["a prompt", "another prompt"], 1, 1, "seed 1")[:2]) == (255, 0, 0)
    label_area = np.asarray(sheet)[: cell_box(rows, ["a prompt", "another prompt"], 0, 0, "seed 1")[1]]
    assert (label_area < 128).any()  # the labels are drawn


def test_grid_labels_fit_long_prompts_wrap_and_the_title_stays_on_the_sheet():
    from PIL import ImageDraw

    from trainer.generate.grid import _font, _wrap

    prompt = "a lighthouse on a cliff at dusk, stained glass, lsstyle, highly detailed"
    tile = Image.new("RGB", (64, 64), (255, 0, 0))
    sheet = compose_grid([[tile]], ["strength 1"], [prompt], title="a very long lora name " * 6)
    ink = np.asarray(sheet)[:, :, 1] < 128
    assert ink[: cell_box([[tile]], [prompt], 0, 0, "x")[1], -3:].sum() == 0  # the title stops before the edge
    draw, font = ImageDraw.Draw(sheet), _font(10)
    lines = _wrap(draw, font, prompt, 150, max_lines=6)
    assert " ".join(lines) == prompt and len(lines) > 1  # every word is shown, over several lines
    assert all(draw.textlength(line, font=font) <= 150 for line in lines)
    assert _wrap(draw, font, prompt, 150, max_lines=2)[-1].endswith("…")


def test_samples_during_training_match_a_preview_of_the_exported_lora(quick_config, tmp_path):
    from trainer.loop import train

    events = []
    config = quick_config(**{"train.steps": 2, "sample.every_n_steps": 2, "sample.steps": 2,
                             "sample.prompts": ["a red fox"], "sample.seed": 7, "export.name": "fox"})
    result = train(config, on_event=events.append)
    sample = tmp_path / "out" / "samples" / "step-2" / "00.png"
    assert sample.is_file()
    assert any(e.kind == "sample" and str(sample) in e.paths for e in events)
    pool = AdapterPool("tiny")
    pool.load("fox", next(p for p in result.outputs if p.name == "fox.safetensors"))
    preview = pool.generate("a red fox", seed=7, steps=2, guidance=config.sample.guidance, width=64, height=64,
                            strengths={"fox": 1.0})[0]
    difference = np.abs(np.asarray(preview, dtype=int) - np.asarray(Image.open(sample), dtype=int))
    assert difference.max() <= 2
