"""The memory estimate: real numbers that move the right way, agree with a measured step, and need no weights."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from trainer.config import load_config
from trainer.errors import ModelError, StudioError
from trainer.estimate import estimate_step, fit_settings, parse_size
from trainer.estimate.build import model_spec

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _config(**overrides):
    return load_config(None, {"train.mixed_precision": "no", **overrides})


@pytest.fixture(scope="module")
def tiny_spec():
    return model_spec(load_config().model)


def _peak(spec, **overrides):
    return estimate_step(_config(**overrides), spec=spec)


def test_estimate_grows_with_batch_and_resolution_and_shrinks_with_checkpointing(tiny_spec):
    small = _peak(tiny_spec, **{"train.batch_size": 1, "data.resolution": 128})
    batch = _peak(tiny_spec, **{"train.batch_size": 4, "data.resolution": 128})
    wide = _peak(tiny_spec, **{"train.batch_size": 1, "data.resolution": 256})
    checkpointed = _peak(tiny_spec, **{"train.batch_size": 4, "data.resolution": 128,
                                       "train.gradient_checkpointing": True})
    # Weights and LoRA state do not depend on the batch or the image size; activations do, about linearly.
    assert small.parts["weights"] == batch.parts["weights"] == wide.parts["weights"] > 0
    assert small.parts["lora"] == batch.parts["lora"] > 0
    assert 3.0 < batch.parts["activations"] / small.parts["activations"] < 4.5
    assert 3.0 < wide.parts["activations"] / small.parts["activations"] < 4.5
    assert checkpointed.parts["activations"] < batch.parts["activations"] / 2
    assert small.peak_bytes < batch.peak_bytes and small.peak_bytes < wide.peak_bytes
    assert checkpointed.peak_bytes < batch.peak_bytes
    # The weights are exactly the architecture's parameters (and buffers) in float32 here.
    frozen = sum(v for k, v in small.parameters.items() if k != "lora")
    assert frozen * 4 <= small.parts["weights"] < frozen * 4 * 1.01


def test_mixed_precision_halves_the_weights(tiny_spec):
    full, half = _peak(tiny_spec), _peak(tiny_spec, **{"train.mixed_precision": "bf16"})
    assert half.parts["weights"] * 2 == pytest.approx(full.parts["weights"], rel=0.01)
    assert half.parts["lora"] == full.parts["lora"]  # float32 masters, gradients and AdamW moments either way


def test_an_ema_copy_on_the_device_is_counted(tiny_spec):
    """The settings of the first test's `small` estimate: its trace is reused (EMA is not part of its key)."""
    small = {"train.batch_size": 1, "data.resolution": 128, "train.ema_decay": 0.999}
    on_device = _peak(tiny_spec, **small)
    assert on_device.parts["ema"] == on_device.parameters["lora"] * 4 > 0  # one float32 copy (trainer/ema.py)
    assert "ema" not in _peak(tiny_spec, **small, **{"train.ema_on_cpu": True}).parts
    assert "ema" not in _peak(tiny_spec, **{**small, "train.ema_decay": 0.0}).parts


def test_tiny_estimate_is_within_20_percent_of_a_measured_step():
    # A fresh subprocess measures the resident high-water mark a real step adds over a warmed-up baseline
    # (bench/estimate_check.py says how); it is a few hundred MiB here, far above the box's noise.
    spec = importlib.util.spec_from_file_location("estimate_check", ROOT / "bench" / "estimate_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    result = check.run_case("tiny,256,4,0")
    assert result["measured_step_bytes"] > 50 * 2**20
    assert 0.8 < result["ratio"] < 1.2, result


def test_family_sdxl_json_runs_without_weights_and_counts_the_published_unet():
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "estimate", "--family", "sdxl", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["parameters"]["unet"] == 2_567_463_684
    assert record["parameters"]["text_encoder_2"] == 694_659_840
    assert record["settings"]["resolution"] == 1024 and record["settings"]["mixed_precision"] == "bf16"
    assert record["peak_bytes"] == sum(record["parts"].values())
    # bf16 weights of UNet + both text encoders (+ the float32 VAE) are ~6.9 GB; a 1024 px step's activations
    # without checkpointing add several GB: the known "SDXL LoRA needs 12+ GB" range.
    assert 6.5e9 < record["parts"]["weights"] < 7.5e9
    assert 9 * 2**30 < record["peak_bytes"] < 20 * 2**30


def test_fit_names_the_first_change_that_fits(tiny_spec):
    config = _config(**{"train.batch_size": 4, "data.resolution": 256})
    plain = estimate_step(config, spec=tiny_spec).peak_bytes
    checkpointed = estimate_step(_config(**{"train.batch_size": 4, "data.resolution": 256,
                                            "train.gradient_checkpointing": True}), spec=tiny_spec).peak_bytes
    found = fit_settings(config, (plain + checkpointed) // 2)
    assert found.changes == ["train.gradient_checkpointing = true"]
    assert found.fitted.peak_bytes == checkpointed
    tighter = fit_settings(config, checkpointed - 1)
    assert tighter.changes[:2] == ["train.gradient_checkpointing = true", "train.batch_size = 1"]
    assert fit_settings(config, plain).changes == []
    assert fit_settings(config, 1).changes is None


def test_sizes_and_families_are_checked():
    assert parse_size("8GB") == parse_size("8 GiB") == 8 * 2**30
    assert parse_size("7500MB") == 7500 * 2**20
    with pytest.raises(StudioError, match="8GB"):
        parse_size("eight")
    with pytest.raises(ModelError, match="--family sd15, sd2 or sdxl"):
        model_spec(load_config().model, family="sd3")
    assert model_spec(load_config().model, family="sd15").default_resolution == 512


def test_out_of_memory_mid_run_fails_with_the_estimate_and_keeps_the_checkpoint(quick_config, tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    from trainer import checkpoint as ckpt
    from trainer.errors import TrainingError
    from trainer.events import Failed
    from trainer.loop import train

    calls = []

    def out_of_memory_in_step_3(module, args):
        # A real forward hook on every module: the third UNet forward (step 3) fails as a full GPU would.
        if isinstance(module, UNet2DConditionModel):
            calls.append(1)
            if len(calls) == 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    events = []
    config = quick_config(**{"train.save_every": 1, "train.steps": 6})
    handle = torch.nn.modules.module.register_module_forward_pre_hook(out_of_memory_in_step_3)
    try:
        with pytest.raises(TrainingError, match="(?i)ran out of GPU memory") as caught:
            train(config, on_event=events.append, workdir=tmp_path / "run")
    finally:
        handle.remove()
    assert "estimated peak of one step is" in caught.value.fix
    assert "train.gradient_checkpointing = true" in caught.value.fix
    failed = [e for e in events if isinstance(e, Failed)]
    assert len(failed) == 1 and "estimated peak" in failed[0].advice
    # The last complete checkpoint (step 2) is intact, and the same process trains again from it.
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-2"
    result = train(config, resume_from=tmp_path / "run", workdir=tmp_path / "run")
    assert result.step == 6


def test_oom_advice_with_a_device_size_names_the_settings_that_fit(tiny_spec):
    from trainer.estimate.oom import oom_advice

    config = _config(**{"train.batch_size": 4, "data.resolution": 256})
    plain = estimate_step(config, spec=tiny_spec).peak_bytes
    checkpointed = estimate_step(_config(**{"train.batch_size": 4, "data.resolution": 256,
                                            "train.gradient_checkpointing": True}), spec=tiny_spec).peak_bytes
    advice = oom_advice(config, (plain + checkpointed) // 2)
    assert "set: train.gradient_checkpointing = true, then resume" in advice


def test_train_tab_estimate_line_follows_the_form(tmp_path):
    import re

    from app.train_tab import MEMORY_FIELDS, estimate_text

    values = {"model.base_model": "tiny", "data.resolution": "128", "train.batch_size": 1,
              "train.mixed_precision": "no"}
    assert set(values) <= set(MEMORY_FIELDS)

    def mib(text):
        number, unit = re.search(r"\*\* ([0-9.]+) (MiB|GiB) per step", text).groups()
        return float(number) * (1024 if unit == "GiB" else 1)

    one = estimate_text(values, tmp_path)
    four = estimate_text({**values, "train.batch_size": 4}, tmp_path)
    assert "activations" in one and "no GPU found" in one
    assert mib(four) > mib(one)
    bad = estimate_text({**values, "train.batch_size": 0}, tmp_path)
    assert "not available" in bad and "train.batch_size must be >= 1" in bad


def test_estimate_command_reads_the_config_and_flags_and_fits(tmp_path, capsys):
    from trainer.cli import main

    (tmp_path / "run.toml").write_text('[train]\nbatch_size = 4\nmixed_precision = "no"\n[data]\nresolution = 256\n')
    assert main(["estimate", "--config", str(tmp_path / "run.toml"), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["settings"]["batch_size"] == 4 and from_file["settings"]["resolution"] == 256
    assert from_file["peak_bytes"] == sum(from_file["parts"].values())
    assert main(["estimate", "--config", str(tmp_path / "run.toml"), "--batch-size", "1",
                 "--gradient-checkpointing", "--json"]) == 0
    flagged = json.loads(capsys.readouterr().out)
    assert flagged["settings"]["gradient_checkpointing"] and flagged["peak_bytes"] < from_file["peak_bytes"]
    budget = (from_file["peak_bytes"] + flagged["peak_bytes"]) // 2
    assert main(["estimate", "--config", str(tmp_path / "run.toml"), "--fit", f"{budget}B"]) == 0
    text = capsys.readouterr().out
    assert "peak" in text and "set:\n  train.gradient_checkpointing = true" in text
    assert main(["estimate", "--fit", "lots"]) == 2
    assert "Write it like 8GB" in capsys.readouterr().err


def test_the_traced_attention_leaves_real_attention_alone_and_skips_the_matrix():
    import torch
    import torch.nn.functional as F

    from trainer.estimate.tracker import PeakTracker, fused_attention

    q = torch.randn(1, 2, 64, 16)
    expected = F.scaled_dot_product_attention(q, q, q)
    with fused_attention():  # a preview in another thread computes exactly as before
        assert torch.equal(F.scaled_dot_product_attention(q, q, q), expected)
    assert F.scaled_dot_product_attention.__module__ != "trainer.estimate.tracker"
    meta = torch.empty(1, 8, 4096, 40, device="meta", requires_grad=True)
    with PeakTracker() as tracker, fused_attention():
        out = F.scaled_dot_product_attention(meta, meta, meta)
    # output (+ a float32 log-sum-exp per row), never the 8 x 4096 x 4096 attention matrix (512 MiB)
    assert out.shape == meta.shape and tracker.peak < 8 * 4096 * 4096 * 4 / 16


def test_each_optimizer_state_is_counted_and_fit_offers_8bit_adam_as_a_setting(tiny_spec):
    from trainer.config import OPTIMIZERS
    from trainer.estimate.step import with_settings

    # Rank 128 gives the tiny model LoRA tensors of 4096+ values, which bitsandbytes keeps in 8 bits.
    config = _config(**{"network.rank": 128, "data.resolution": 64, "train.gradient_checkpointing": True})
    lora = {name: estimate_step(with_settings(config, optimizer=name), spec=tiny_spec).parts["lora"]
            for name in OPTIMIZERS}
    weights_and_grads = estimate_step(config, spec=tiny_spec).parameters["lora"] * 8  # float32 each
    assert lora["adafactor"] < lora["adamw8bit"] < lora["adamw"] == lora["schedulefree"] < lora["prodigy"]
    assert lora["adamw"] == weights_and_grads * 2  # AdamW's two float32 moments = weights + gradients
    adamw, eight = (estimate_step(with_settings(config, optimizer=o), spec=tiny_spec).peak_bytes
                    for o in ("adamw", "adamw8bit"))
    found = fit_settings(config, (adamw + eight) // 2)
    assert found.changes == ['optim.optimizer = "adamw8bit" (needs a CUDA GPU and `pip install bitsandbytes`)']
    assert found.fitted.settings["optimizer"] == "adamw8bit" and found.fitted.peak_bytes == eight
