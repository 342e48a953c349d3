"""Hot-swap under torch.compile: swapping LoRAs of compatible shape does not recompile the UNet.

Dynamo decides recompiles by its guards, whatever backend turns the graph into code, so the test compiles with
the "eager" backend: the same guards as inductor without minutes of C++ compilation on a 2-core CI machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from pool_loras import write_lora

from trainer.generate import AdapterPool

QUICK = dict(steps=1, guidance=1.0, width=64, height=64, output_type="latent")


@pytest.mark.slow
def test_hotswap_swaps_loras_without_recompiling(tmp_path, tiny_pipe):
    import torch._dynamo

    few = ("attn2.to_k", "attn2.to_v")  # fewer LoRA layers: dynamo traces each one, and CI has 2 cores
    a = write_lora(tiny_pipe, tmp_path / "a.safetensors", seed=1, fmt="kohya", rank=4, targets=few)
    b = write_lora(tiny_pipe, tmp_path / "b.peft.safetensors", seed=2, rank=8, targets=few)
    c = write_lora(tiny_pipe, tmp_path / "c.safetensors", seed=5, fmt="kohya", rank=2, targets=few[:1])
    te = write_lora(tiny_pipe, tmp_path / "te.safetensors", seed=3, fmt="kohya", text_encoder=True,
                    targets=("attn2.to_k",))
    reference = AdapterPool("tiny")
    reference.load("a", a)
    reference.load("b", b)
    reference.load("c", c)
    plain = {name: reference.generate("a boat", seed=4, strengths={name: 1.0}, **QUICK)[0].numpy()
             for name in ("a", "b", "c")}
    plain["base"] = reference.generate("a boat", seed=4, **QUICK)[0].numpy()

    pool = AdapterPool("tiny", compile=True, compile_backend="eager", target_rank=8)
    assert pool.load("a", a).hotswap and pool.load("b", b).hotswap
    report = pool.load("te", te)  # before the first compile, so the graph already has its layers
    assert not report.hotswap and "text-encoder" in report.note
    assert "te" in pool.pipe.get_list_adapters()["text_encoder"]

    def run(strengths):
        return pool.generate("a boat", seed=4, strengths=strengths, **QUICK)[0].numpy()

    torch._dynamo.reset()
    first_a = run({"a": 1.0})  # compiles once
    half_a = run({"a": 0.5})
    torch._dynamo.config.error_on_recompile = True
    try:
        swapped_b = run({"b": 1.0})
        base = run({})
        again_a = run({"a": 1.0})
        again_half = run({"a": 0.5})
        assert pool.load("c", c).hotswap  # added while compiled: fewer layers and a lower rank, no recompile
        fewer = run({"c": 1.0})
        after_c = run({"a": 1.0})
    finally:
        torch._dynamo.config.error_on_recompile = False
    assert np.array_equal(first_a, again_a) and np.array_equal(half_a, again_half)
    assert np.array_equal(first_a, after_c) and np.allclose(fewer, plain["c"], atol=1e-5)
    assert np.allclose(first_a, plain["a"], atol=1e-5) and np.allclose(swapped_b, plain["b"], atol=1e-5)
    assert np.array_equal(base, plain["base"])
    assert np.abs(first_a - swapped_b).max() > 1e-3 and np.abs(first_a - half_a).max() > 1e-4
    # Using "te" works too (it is an ordinary adapter) but recompiles; test_pool.py covers its images.
