"""What a loss mask adds: preparing it (once per image, when the dataset is loaded) and weighting one step's loss.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/mask_cost.py

Per bucket size: the median time of `crop_mask` + `to_latent_grid` (read from a decoded mask, Lanczos resize,
crop, area-average to the latent grid) beside `prepare_image` of the RGB image itself (the work the mask rides
along with), and of `per_example_loss` with and without a mask on a batch of 4 latents of that size.
"""

from __future__ import annotations

import random
import statistics
import time

import numpy as np
import torch
from PIL import Image

from trainer.data.images import prepare_image
from trainer.data.masks import batch_mask, crop_mask, to_latent_grid
from trainer.examples import TrainBatch
from trainer.loop import per_example_loss


def median_ms(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| bucket | source | prepare_image | mask: crop + latent grid | loss, no mask | loss, mask |")
    print("|---|---|---|---|---|---|")
    for (w, h), src in (((512, 512), (768, 640)), ((1024, 1024), (1536, 1280)), ((1216, 832), (1800, 1200))):
        image = Image.fromarray(rng.integers(0, 256, (src[1], src[0], 3), dtype=np.uint8))
        mask = Image.fromarray(rng.integers(0, 256, (src[1], src[0]), dtype=np.uint8), mode="L")
        pixels, crop = prepare_image(image, w, h)
        image_ms = median_ms(lambda image=image, w=w, h=h: prepare_image(image, w, h, rng=random.Random(0)))
        mask_ms = median_ms(lambda mask=mask, w=w, h=h, crop=crop:
                            to_latent_grid(crop_mask(mask, w, h, crop), (h // 8, w // 8)))
        latent = to_latent_grid(crop_mask(mask, w, h, crop), (h // 8, w // 8))
        squared = torch.rand(4, 4, h // 8, w // 8)
        plain = TrainBatch(squared, {}, None)
        masked = TrainBatch(squared, {}, None, mask=batch_mask([latent] * 4, squared.shape))
        plain_ms = median_ms(lambda plain=plain, squared=squared: per_example_loss(squared, plain), 50)
        masked_ms = median_ms(lambda masked=masked, squared=squared: per_example_loss(squared, masked), 50)
        print(f"| {w}x{h} | {src[0]}x{src[1]} | {image_ms:.1f} ms | {mask_ms:.1f} ms | {plain_ms:.3f} ms | "
              f"{masked_ms:.3f} ms |")


if __name__ == "__main__":
    main()
