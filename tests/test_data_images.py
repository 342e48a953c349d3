"""Safe image opening with hostile files made here, and the image -> tensor step."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from data_files import exif_rotated_jpeg, huge_png_header, noise_image, truncated_png, write_image
from PIL import Image

from trainer.config import load_config
from trainer.data.images import image_size, open_image, prepare_image, read_image
from trainer.errors import ConfigError, DatasetError


def refusal(path) -> str:
    with pytest.raises(DatasetError) as caught:
        open_image(path)
    message = str(caught.value)
    assert str(path) in message, "every refusal names the file"
    return message


def test_truncated_png_is_refused_with_the_fix(tmp_path):
    message = refusal(truncated_png(tmp_path / "03.png"))
    assert "truncated" in message and "Re-export it or remove it" in message


def test_text_named_png_is_judged_by_content(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    assert "content is text" in refusal(path)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert "empty file" in refusal(empty)


def test_png_with_a_jpg_name_is_accepted(tmp_path):
    path = tmp_path / "really-a-png.jpg"
    noise_image(32, 16).save(path, format="PNG")
    loaded = read_image(path)
    assert loaded.format == "PNG" and loaded.image.size == (32, 16)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    message = refusal(huge_png_header(tmp_path / "bomb.png"))
    assert "too large to open safely" in message and "Downscale" in message


def test_pillow_bomb_warning_size_is_an_error_too(tmp_path):
    # 10000 x 9000 = 90 MP: above Pillow's warning limit (89.5 MP) but below its error limit.
    assert "too large" in refusal(huge_png_header(tmp_path / "big.png", 10000, 9000))


def test_gif_and_animated_png_are_refused(tmp_path):
    gif = tmp_path / "anim.png"
    frames = [noise_image(16, 16, seed=s) for s in range(2)]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert "content is GIF" in refusal(gif)
    apng = tmp_path / "anim2.png"
    frames[0].save(apng, format="PNG", save_all=True, append_images=frames[1:])
    message = refusal(apng)
    assert "animated (2 frames)" in message and "Export one frame" in message


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, format="JPEG", quality=95)
    loaded = read_image(path)
    assert loaded.mode == "CMYK" and loaded.image.mode == "RGB"
    red, green, blue = loaded.image.getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_is_applied(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    image = open_image(path)
    assert image.size == (20, 40)
    assert image_size(path) == (20, 40), "bucketing sees the rotated size from the header alone"
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, "the left (red) half is on top after a 90° clockwise turn"
    assert bottom[2] > 200 and bottom[0] < 60


def test_alpha_is_composited_on_the_background(tmp_path):
    path = tmp_path / "rgba.png"
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(path)
    green = open_image(path, background="#00ff00")
    assert green.mode == "RGB" and green.getpixel((5, 5)) == (0, 255, 0)
    assert green.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(DatasetError, match="data.background"):
        open_image(path, background="not-a-colour")
    with pytest.raises(ConfigError, match="data.background must be a colour"):
        load_config(None, {"data.background": "not-a-colour"})


def test_palette_with_transparency_and_16_bit_grey(tmp_path):
    palette = tmp_path / "p.png"
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(palette, transparency=1)
    assert open_image(palette).getpixel((3, 3)) == (255, 255, 255)
    deep = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(deep)
    loaded = read_image(deep)
    assert loaded.mode.startswith("I") and loaded.image.getpixel((4, 4)) == (128, 128, 128), \
        "16-bit values are scaled, not clipped to white"


def test_prepare_image_covers_crops_and_flips(tmp_path):
    image = open_image(write_image(tmp_path / "wide.png", 300, 100))
    pixels, (top, left) = prepare_image(image, 128, 64, random_crop=False)
    assert pixels.shape == (3, 64, 128) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0 and top == 0 and left == (192 - 128) // 2
    a, crop_a = prepare_image(image, 64, 64, random_crop=True, rng=random.Random(3))
    b, crop_b = prepare_image(image, 64, 64, random_crop=True, rng=random.Random(3))
    assert crop_a == crop_b and torch.equal(a, b), "a seeded random crop repeats"
    crops = {prepare_image(image, 64, 64, True, np.random.default_rng(s))[1] for s in range(8)}
    assert len(crops) > 1
    flipped, _ = prepare_image(image, 128, 64, flip=True)
    assert torch.equal(flipped, pixels.flip(-1))
