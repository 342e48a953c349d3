"""Pretrain the embedded tiny SD 1.x or SDXL model on the shapes vocabulary (see trainer/models/pretrain.py).

    OMP_NUM_THREADS=2 python tools/pretrain_tiny.py --out runs/pretrain      # about 45 min on 2 CPU cores
    python tools/pretrain_tiny.py --out runs/pretrain --unet-steps 1200      # resumes, trains further
    OMP_NUM_THREADS=2 python tools/pretrain_tiny.py --family sdxl --out runs/pretrain-sdxl   # tiny-sdxl: 35 min

Deterministic from --seed; re-running with the same --out resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.models.pretrain import PretrainConfig, pretrain  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(PretrainConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    args = parser.parse_args(argv)
    pretrain(PretrainConfig(**vars(args)))


if __name__ == "__main__":
    main()
