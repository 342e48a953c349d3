"""Write pictures of the shapes vocabulary (trainer/models/shapes.py) as PNG + caption files.

    python tools/make_shapes.py out/shapes --count 200 --seed 1          # the training split
    python tools/make_shapes.py out/held-out --count 48 --held-out       # only the held-out colour x shape pairs

Deterministic: the same seed and count write the same files. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.models.shapes import make_pictures  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write NNNN.png and NNNN.txt into")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--held-out", action="store_true", help="draw only the pairs pretraining leaves out")
    args = parser.parse_args(argv)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (image, caption, _) in enumerate(make_pictures(args.seed, args.count, args.held_out)):
        image.save(folder / f"{index:04d}.png")
        (folder / f"{index:04d}.txt").write_text(caption + "\n", encoding="utf-8")
    print(f"wrote {args.count} pictures to {folder}")


if __name__ == "__main__":
    main()
