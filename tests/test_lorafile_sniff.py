"""The pickle sniff judges a file by what it is: every valid safetensors header length loads, pickles never do.

A safetensors file starts with its header length (8 bytes, little-endian), so its first byte is the low
byte of that length and is 0x80 for one length in 256; only the byte after the length (the JSON's `{`)
tells a safetensors file from a pickle.
"""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from trainer.errors import LoraFileError
from trainer.generate.lorafile import read_lora_file

KEY = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"


def _hand_written(path, pad: int) -> int:
    """A valid safetensors file whose header is exactly `pad` bytes longer than the minimum (no alignment)."""
    data = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = {KEY: {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, len(data)]},
              "__metadata__": {"pad": "x" * pad}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return len(raw)


def test_every_low_byte_of_the_header_length_is_read(tmp_path):
    seen = set()
    for pad in range(300):
        path = tmp_path / f"l{pad}.safetensors"
        length = _hand_written(path, pad)
        seen.add(length & 0xFF)
        lora = read_lora_file(path)  # raises if the sniff calls it a pickle
        assert lora.metadata["pad"] == "x" * pad
        assert torch.equal(lora.tensors[KEY], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert seen == set(range(256))


def test_files_written_by_safetensors_with_0x80_and_PK_lengths_load(tmp_path):
    """safetensors pads headers to 8 bytes, so its own files hit 0x80 (and 'PK' = 0x4b50 is an aligned length)."""
    hits = {0x80: 0, 0x50: 0}
    for pad in range(0, 2400, 3):
        path = tmp_path / "lib.safetensors"
        save_file({KEY: torch.ones(2, 2)}, str(path), metadata={"pad": "y" * pad})
        first = path.read_bytes()[0]
        if first in hits:
            hits[first] += 1
            assert read_lora_file(path).metadata["pad"] == "y" * pad
    assert hits[0x80] > 0
    big = tmp_path / "pk.safetensors"  # header length 0x4b50 exactly: starts with b"PK"
    base = {KEY: {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "__metadata__": {"pad": ""}}
    base["__metadata__"]["pad"] = "z" * (0x4B50 - len(json.dumps(base, separators=(",", ":"))))
    raw = json.dumps(base, separators=(",", ":")).encode()
    assert len(raw) == 0x4B50
    big.write_bytes(len(raw).to_bytes(8, "little") + raw + struct.pack("<4f", 1, 2, 3, 4))
    assert big.read_bytes()[:2] == b"PK"
    assert read_lora_file(big).tensors[KEY].shape == (2, 2)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_raw_pickles_are_refused_as_pickles(tmp_path, protocol):
    path = tmp_path / f"p{protocol}.safetensors"
    path.write_bytes(pickle.dumps({KEY: [1, 2, 3], "pad": "{" * 40}, protocol=protocol))
    with pytest.raises(LoraFileError, match="pickle") as err:
        read_lora_file(path)
    assert str(path) in str(err.value)


def test_torch_zip_archives_are_refused_as_pickles(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({KEY: torch.ones(2, 2)}, path)
    assert path.read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(LoraFileError, match="pickle"):
        read_lora_file(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({KEY: torch.ones(2, 2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(LoraFileError, match="pickle"):
        read_lora_file(legacy)
