"""Loss masks (`01.mask.png`): paired by the scanner, checked by the doctor, moved with their image through
buckets, crops and flips, and obeyed by the loss in training and validation on the tiny model."""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import truncated_png, write_image
from PIL import Image

from trainer.config import DataConfig, TrainConfig
from trainer.data import doctor, prepare_image, scan_folder
from trainer.data.masks import crop_mask, to_latent_grid
from trainer.examples import ExampleSet


def red_and_blue(path: Path, width: int, height: int, red: tuple[int, int, int, int]) -> Path:
    """A blue image with a red box (left, top, right, bottom), and its mask: white exactly on the red box."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), red)
    image.save(path)
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, red)
    mask.save(path.with_name(path.stem + ".mask.png"))
    path.with_suffix(".txt").write_text("a red box", encoding="utf-8")
    return path


def redness(pixels: torch.Tensor) -> torch.Tensor:
    """The red channel of prepared pixels (CHW in -1..1) as 0..1: where the image is red, the mask should be 1."""
    return (pixels[0] + 1) / 2


def by_code(report) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for f in report.findings:
        found.setdefault(f.code, {})[Path(f.path).name] = f"{f.message}. {f.fix}"
    return found


def test_masks_are_paired_with_their_images_and_never_trained_as_images(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "10_cat" / "01.png", seed=1, caption="a cat")
    Image.new("L", (160, 160), 255).save(root / "10_cat" / "01.mask.png")
    write_image(root / "02.jpg", seed=2, caption="a dog")
    Image.new("L", (160, 160), 128).save(root / "02.MASK.PNG")
    write_image(root / "03.png", seed=3, caption="no mask")
    Image.new("L", (160, 160), 255).save(root / "lost.mask.png")

    found = scan_folder(root)
    masks = {i.image_path.name: i.mask_path and i.mask_path.name for i in found.items}
    assert masks == {"01.png": "01.mask.png", "02.jpg": "02.MASK.PNG", "03.png": None}
    assert [p.name for p in found.orphan_masks] == ["lost.mask.png"]
    assert not found.ignored and not found.orphan_captions

    report = doctor(root, TrainConfig(), tokenizer=None)
    assert report.ok and report.summary["images"] == 3
    assert "2 of 3 images have a .mask.png" in report.format()
    orphan = by_code(report)["orphan-mask"]["lost.mask.png"]
    assert "no image lost.png, .jpg" in orphan and "01.mask.png for 01.png" in orphan


def test_the_doctor_names_each_bad_mask_and_the_fix(tmp_path):
    root = tmp_path / "ds"
    for n, name in enumerate(("small", "turned", "broken", "black", "good")):
        write_image(root / f"{name}.png", 64, 48, seed=n, caption=name)
    Image.new("L", (32, 24), 255).save(root / "small.mask.png")
    Image.new("L", (48, 64), 255).save(root / "turned.mask.png")
    truncated_png(root / "broken.mask.png")
    Image.new("L", (64, 48), 0).save(root / "black.mask.png")
    Image.new("RGBA", (64, 48), (255, 255, 255, 255)).save(root / "good.mask.png")

    report = doctor(root, TrainConfig(), tokenizer=None)
    found = by_code(report)
    assert not report.ok
    assert set(found["mask-size"]) == {"small.mask.png", "turned.mask.png"}
    assert "is 32x24 but its image small.png is 64x48" in found["mask-size"]["small.mask.png"]
    assert "Save the mask at 64x48" in found["mask-size"]["small.mask.png"]
    assert "EXIF orientation" in found["mask-size"]["turned.mask.png"]
    assert "is not a readable mask" in found["bad-mask"]["broken.mask.png"]
    assert "truncated PNG" in found["bad-mask"]["broken.mask.png"]
    assert "black everywhere, so black.png trains nothing" in found["black-mask"]["black.mask.png"]
    assert {f.level for f in report.findings if f.code == "black-mask"} == {"warning"}
    assert "good.mask.png" not in str(report.findings)

    config = TrainConfig()
    config.data.skip_bad_images = True
    skipping = doctor(root, config, tokenizer=None)
    assert skipping.ok and sorted(p.name for p in skipping.skipped) == ["broken.png", "small.png", "turned.png"]
    assert sorted(i.image_path.name for i in skipping.items) == ["black.png", "good.png"]

    config = TrainConfig()
    config.data.masked_loss = False
    ignoring = doctor(root, config, tokenizer=None)
    assert ignoring.ok and len(ignoring.items) == 5
    assert "5 of 5 images have a .mask.png, ignored (data.masked_loss is off)" in ignoring.format()

    from trainer.cli import build_parser, main
    from trainer.cli.train import overrides_from_args

    assert main(["doctor", str(root)]) == 1 and main(["doctor", str(root), "--no-masked-loss"]) == 0
    args = build_parser().parse_args(["train", "--no-masked-loss", "--alpha-mask"])
    assert overrides_from_args(args) == {"data.masked_loss": False, "data.alpha_mask": True}


@pytest.mark.parametrize(("size", "bucket", "random_crop"), [
    ((150, 90), (128, 64), False),   # resized by 0.85 (Lanczos), then 4 px cropped off the width
    ((96, 64), (64, 64), True),      # no resize, a random 64-px window of 96
    ((50, 30), (192, 128), True),    # upscaled 4.27x, a random crop of the overhang
])
def test_the_mask_gets_the_image_resize_and_crop(tmp_path, size, bucket, random_crop):
    path = red_and_blue(tmp_path / "img.png", *size, red=(0, 0, size[0] // 3, size[1]))
    image, mask = Image.open(path).convert("RGB"), Image.open(path.with_name("img.mask.png"))
    for flip in (False, True):
        pixels, crop = prepare_image(image, *bucket, random_crop=random_crop, rng=random.Random(7), flip=flip)
        weights = crop_mask(mask, *bucket, crop)
        weights = weights.flip(-1) if flip else weights
        assert weights.shape == pixels.shape[1:]
        assert (weights - redness(pixels)).abs().max() < 0.01, "mask and red box line up, pixel for pixel"
        assert 0 < weights.mean() < 1


@pytest.fixture(scope="module")
def base():
    from trainer.models import load_base

    return load_base(TrainConfig().model)


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    """Three images of other shapes, each red on part of it with a mask on the red, and one without a mask."""
    root = tmp_path_factory.mktemp("boxes")
    red_and_blue(root / "wide.png", 300, 100, red=(0, 0, 100, 100))       # bucket 192x64, cropped
    red_and_blue(root / "tall.png", 90, 200, red=(0, 120, 50, 200))       # another bucket
    red_and_blue(root / "square.png", 140, 140, red=(20, 20, 70, 120))
    write_image(root / "plain.png", 128, 128, seed=4, caption="no mask")
    return root


def expected_mask(example, latent_hw, flip: bool, data: DataConfig) -> torch.Tensor:
    """Where the image is red after the same bucket, crop and flip, on the latent grid: found from the pixels."""
    image = Image.open(example.item.image_path).convert("RGB")
    rng = random.Random(str(example.item.image_path)) if data.random_crop else None
    pixels, crop = prepare_image(image, *example.size, random_crop=data.random_crop, rng=rng, flip=flip)
    assert crop == example.crop_top_left
    return to_latent_grid(redness(pixels), latent_hw)


def test_the_mask_of_each_example_lines_up_with_its_flipped_cropped_bucketed_latents(boxes, base, tmp_path):
    data = DataConfig(path=str(boxes), flip=True, random_crop=True, cache_dir=str(tmp_path / "cache"))
    items = scan_folder(boxes).items
    examples = ExampleSet(base, items, data, 128, torch.device("cpu"), torch.float32, cache_text=True)
    sizes = {ex.item.image_path.name: ex.size for ex in examples.examples}
    assert len(set(sizes.values())) == 3 and sizes["wide.png"] == (192, 64), "three buckets"
    rng = np.random.default_rng(0)
    for ex in examples.examples:
        if ex.item.image_path.name == "plain.png":
            assert ex.mask is None
            continue
        latent_hw = tuple(ex.latent_mean.shape[-2:])
        assert ex.mask.shape == (1, *latent_hw)
        seen = set()
        while len(seen) < 2:  # draw orientations as training does until both sides have been trained
            oriented = examples._oriented(ex, rng)
            flipped = oriented.latent_mean is ex.flipped_mean
            seen.add(flipped)
            want = expected_mask(ex, latent_hw, flipped, data)
            assert (oriented.mask - want).abs().max() < 0.01, (ex.item.image_path.name, flipped)
        assert not torch.allclose(ex.mask, ex.mask.flip(-1)), "the boxes are off-centre, so a flip shows"

    masked = next(i for i, ex in enumerate(examples.examples) if ex.mask is not None)
    batch = examples.batch([masked, masked], rng)
    assert batch.mask.shape == (2, 1, *batch.latents.shape[-2:])

    # An edited mask is read again with a warm latent cache: the latents do not depend on it, the mask is new.
    Image.new("L", (140, 140), 255).save(boxes / "square.mask.png")
    cached = len(list((tmp_path / "cache").rglob("*.safetensors")))
    again = ExampleSet(base, scan_folder(boxes).items, data, 128, torch.device("cpu"), torch.float32, True)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == cached, "no latent was encoded again"
    square = next(ex for ex in again.examples if ex.item.image_path.name == "square.png")
    assert torch.equal(square.mask, torch.ones_like(square.mask))

    off = ExampleSet(base, items[:1], DataConfig(path=str(boxes), masked_loss=False), 128, torch.device("cpu"),
                     torch.float32, cache_text=True)
    assert off.examples[0].mask is None and off.batch([0], rng).mask is None


def test_an_alpha_channel_is_the_mask_only_when_asked(tmp_path, base):
    root = tmp_path / "alpha"
    root.mkdir()
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (32, 0, 64, 64))  # the right half transparent
    rgba.save(root / "cut.png")
    items = scan_folder(root).items
    on = ExampleSet(base, items, DataConfig(path=str(root), alpha_mask=True), 64, torch.device("cpu"),
                    torch.float32, cache_text=True)
    mask = on.examples[0].mask[0]
    assert torch.equal(mask[:, :4], torch.ones(8, 4)) and torch.equal(mask[:, 4:], torch.zeros(8, 4))
    off = ExampleSet(base, items, DataConfig(path=str(root)), 64, torch.device("cpu"), torch.float32, True)
    assert off.examples[0].mask is None


def test_the_loss_ignores_the_error_under_a_black_mask(boxes, base):
    """The gradient of the step's loss is exactly 0 at every masked-out latent pixel and not elsewhere; an
    all-white mask gives the loss of no mask. (The masked-out pixels still reach the UNet as context, through
    the VAE and attention, as in kohya and OneTrainer: what the mask removes is their error.)"""
    from trainer.loop import training_step
    from trainer.network import add_lora

    config = TrainConfig()
    config.network.rank = 4
    data = DataConfig(path=str(boxes), flip=True)
    items = [i for i in scan_folder(boxes).items if i.image_path.name == "wide.png"]
    examples = ExampleSet(base, items, data, 128, torch.device("cpu"), torch.float32, cache_text=True)
    add_lora(base, config.network)
    captured = {}

    def keep_output(_module, _args, output):
        output.sample.retain_grad()
        captured["prediction"] = output.sample

    handle = base.pipe.unet.register_forward_hook(keep_output)
    try:
        rng = np.random.default_rng(1)
        batch = examples.batch([0, 0, 0, 0], rng, generators=[torch.Generator().manual_seed(k) for k in range(4)])
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_config(base.pipe.scheduler.config)
        gens = [torch.Generator().manual_seed(10 + k) for k in range(4)]
        training_step(base.pipe.unet, scheduler, base, batch, config, gens).backward()
        grad = captured["prediction"].grad
        black = (batch.mask == 0).expand_as(grad)
        assert black.any() and (~black).any()
        assert torch.equal(grad[black], torch.zeros_like(grad[black]))
        assert grad[~black].abs().min() > 0, "every pixel the mask keeps has a say"

        white = dataclasses.replace(batch, mask=torch.ones_like(batch.mask))
        plain = dataclasses.replace(batch, mask=None)
        losses = [training_step(base.pipe.unet, scheduler, base, b, config,
                                [torch.Generator().manual_seed(10 + k) for k in range(4)]).item()
                  for b in (white, plain)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    finally:
        handle.remove()


def test_training_and_validation_obey_the_masks(tmp_path, example_dataset):
    """A real run: the image under an all-black mask scores exactly 0, in training steps and in validation."""
    from trainer.config import load_config
    from trainer.loop import train

    root, held = tmp_path / "ds", tmp_path / "val"
    for folder, stem in ((root, "00"), (root, "01"), (held, "00")):
        folder.mkdir(exist_ok=True)
        for suffix in (".png", ".txt"):
            shutil.copy(example_dataset / f"{stem}{suffix}", folder / f"{stem}{suffix}")
    size = Image.open(root / "00.png").size
    for folder in (root, held):
        Image.new("L", size, 0).save(folder / "00.mask.png")
    config = load_config(None, {
        "data.path": str(root), "data.resolution": 64, "data.validation_dir": str(held),
        "train.steps": 6, "train.validate_every": 3, "export.output_dir": str(tmp_path / "out"),
        "export.dtype": "float32"})
    events = []
    result = train(config, on_event=events.append)
    assert any(loss == 0.0 for loss in result.losses), "steps that drew the black-masked image learn nothing"
    assert any(loss > 0.0 for loss in result.losses), "steps that drew the other image do"
    validation = [e.loss for e in events if type(e).__name__ == "Validation"]
    assert validation == [0.0, 0.0]


def test_the_train_form_offers_both_mask_settings_with_their_help(tmp_path):
    import gradio as gr

    from app import forms

    with gr.Blocks():
        widgets = forms.build_fields(tuple(f for f in forms.ADVANCED if "mask" in f.key))
    assert isinstance(widgets["data.masked_loss"], gr.Checkbox) and widgets["data.masked_loss"].value is True
    assert "(white = train" in widgets["data.masked_loss"].info
    assert "alpha channel" in widgets["data.alpha_mask"].info and widgets["data.alpha_mask"].value is False
    values = {**forms.config_to_values(TrainConfig()), "data.masked_loss": False, "data.alpha_mask": True}
    config = forms.values_to_config(values, tmp_path, dataset="cats")
    assert (config.data.masked_loss, config.data.alpha_mask) == (False, True)
