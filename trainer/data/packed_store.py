"""Cached tensors (latent distributions, caption embeddings) packed into one preallocated block per group.

    store = PackedStore({(512, 512): 800, (576, 448): 200})      # slots per group (a bucket: x2 with flips)
    kept = store.keep((512, 512), {"mean": mean, "std": std})     # views into that bucket's blocks

One small long-lived tensor per image or caption, allocated between the encoders' large, short-lived
activations, pins the heap: on 800 pictures at 128 px (bench/dataset_scale.py) resident memory grew 91 MiB
where the cached latents and caption embeddings were 21 MiB, and glibc's `malloc_trim` gave back 70 MiB of
it. Copying each entry into its group's block as it is made leaves the encoders' memory free for reuse whole.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch


class PackedStore:
    def __init__(self, slots: dict[Hashable, int]) -> None:
        self.slots = dict(slots)
        self.blocks: dict[Hashable, dict[str, torch.Tensor]] = {}
        self.used: dict[Hashable, int] = {}

    def keep(self, group: Hashable, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy `tensors` into the next free slot of `group`'s blocks (made at the group's first entry)."""
        if group not in self.blocks:
            count = self.slots[group]
            self.blocks[group] = {name: torch.empty((count, *t.shape), dtype=t.dtype, device=t.device)
                                  for name, t in tensors.items()}
            self.used[group] = 0
        slot = self.used[group]
        if slot >= self.slots[group]:
            raise ValueError(f"{group!r} has {self.slots[group]} slots, all used")
        self.used[group] = slot + 1
        block = self.blocks[group]
        for name, tensor in tensors.items():
            block[name][slot].copy_(tensor)
        return {name: block[name][slot] for name in tensors}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for block in self.blocks.values() for t in block.values())
