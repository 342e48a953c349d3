"""What the loop does with each trained component: a fixed order whatever the hash seed, train mode for the text
encoders, frozen weights placed in their compute dtype (SDXL's VAE encoding in float32 under fp16), images
streamed through the VAE, captions encoded in batches, and the CPU thread count pinned from the config.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainer import distributed
from trainer.config import DataConfig, ModelConfig, NetworkConfig, load_config, save_config
from trainer.errors import ConfigError
from trainer.examples import ExampleSet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """What the CLI pins by default (train.num_threads = 1), so in-process runs compare bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sdxl_te_config(example_dataset, out, **overrides):
    values = {"model.base_model": "tiny-sdxl", "data.path": str(example_dataset), "data.resolution": 64,
              "network.train_text_encoder": True, "network.rank": 4, "network.alpha": 4.0,
              "optim.learning_rate": 1e-3, "optim.text_encoder_lr": 1e-3, "train.steps": 3,
              "train.log_with": "none", "export.output_dir": str(out), "export.dtype": "float32"}
    values.update(overrides)
    return load_config(None, values)


def _cli_train(config_path, hash_seed: str, *args: str, **env_vars: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed, **env_vars}
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "train", "--config", str(config_path), *args],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_sdxl_text_encoder_checkpoint_saved_under_one_hash_seed_resumes_under_another(example_dataset, tmp_path,
                                                                                     one_thread):
    """Under PYTHONHASHSEED=1 a set difference put text_encoder_2 first: its tensors were saved as
    `text_encoder`'s, and a resume under another seed failed. Now the order is the family's and the
    checkpoint hooks match models to components by identity."""
    from trainer.loop import train

    config_path = save_config(_sdxl_te_config(example_dataset, tmp_path / "run"), tmp_path / "run.toml")
    (tmp_path / "stop").touch()
    _cli_train(config_path, "1", "--stop-file", str(tmp_path / "stop"))  # stops after step 1, checkpointed
    checkpoint = tmp_path / "run" / "checkpoints" / "step-1"
    for index, component in enumerate(("unet", "text_encoder", "text_encoder_2")):
        keys = load_file(str(checkpoint / f"lora_{index}.safetensors")).keys()
        assert keys and all(k.startswith(f"{component}.") for k in keys), component
    # Resumed from a shell with another thread count: the CLI pins the config's (train.num_threads = 1).
    _cli_train(config_path, "2", "--resume", str(tmp_path / "run"), OMP_NUM_THREADS="2",
               **{distributed.RANK_REPORT_ENV: str(tmp_path / "ranks")})
    assert json.loads((tmp_path / "ranks" / "rank-0.json").read_text())["num_threads"] == 1

    full = train(_sdxl_te_config(example_dataset, tmp_path / "full"))
    resumed = load_file(str(tmp_path / "run" / "lora.peft.safetensors"))
    uninterrupted = load_file(str(full.outputs[1]))
    assert resumed.keys() == uninterrupted.keys()
    assert any(k.startswith("text_encoder_2.") for k in resumed)
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0, msg=key)


def _base_with_lora(base_model: str, network: NetworkConfig):
    from trainer.models import load_base
    from trainer.network import add_lora, trainable_parameters

    base = load_base(ModelConfig(base_model=base_model))
    add_lora(base, network)
    return base, trainable_parameters(base, network)


def test_trained_text_encoders_are_in_train_mode_so_lora_dropout_applies():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from trainer.loop import prepare_models, trainable_text_fn
    from trainer.optimizers import build_optimizer

    config = load_config(None, {"network.train_text_encoder": True, "network.dropout": 0.5})
    base, params = _base_with_lora("tiny", config.network)
    torch.manual_seed(0)
    for p in params["text_encoder"]:  # LoRA B starts at zero, and dropout before a zero B changes nothing
        p.data.normal_(std=0.5)
    for name in ("unet", "text_encoder"):
        getattr(base.pipe, name).eval()  # as from_pretrained leaves a real model
    AcceleratorState._reset_state()
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    models, _, _ = prepare_models(accelerator, base, params, *build_optimizer(params, config, 1))
    assert all(model.training for model in models.values())

    encode = trainable_text_fn(base, models)
    first, second = (encode(["lsstyle, a red square"])["encoder_hidden_states"] for _ in range(2))
    assert first.requires_grad
    assert not torch.equal(first, second), "LoRA dropout did not change the text encoder's output"
    base.pipe.text_encoder.eval()
    with torch.no_grad():
        third, fourth = (encode(["lsstyle, a red square"])["encoder_hidden_states"] for _ in range(2))
    assert torch.equal(third, fourth)


@pytest.mark.parametrize(("base_model", "force_upcast", "vae_dtype"), [
    ("tiny-sdxl", True, torch.float32),   # SDXL's VAE overflows in float16
    ("tiny-sdxl", False, torch.float16),  # a VAE whose config says it is fp16-safe (like sdxl-vae-fp16-fix)
    ("tiny", True, torch.float16),        # SD 1.x's VAE is fine in float16
])
def test_frozen_weights_are_placed_in_their_compute_dtype_and_lora_stays_float32(base_model, force_upcast,
                                                                                vae_dtype):
    from trainer.precision import place_weights

    network = NetworkConfig(train_text_encoder=True)
    base, params = _base_with_lora(base_model, network)
    base.pipe.vae.register_to_config(force_upcast=force_upcast)
    before = [p.detach().clone() for group in params.values() for p in group]
    place_weights(base, params, torch.device("cpu"), "fp16")

    pipe = base.pipe
    assert pipe.vae.dtype == vae_dtype
    for name in ("unet", *base.family.text_encoder_names):
        frozen = {p.dtype for p in getattr(pipe, name).parameters() if not p.requires_grad}
        assert frozen == {torch.float16}, name
    after = [p for group in params.values() for p in group]
    assert all(p.dtype == torch.float32 for p in after)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), "LoRA values changed in the move"


def test_an_fp16_sdxl_run_encodes_images_with_a_float32_vae_and_renders_samples(example_dataset, tmp_path,
                                                                               monkeypatch, one_thread):
    """The fp16 path as far as a CPU can run it (accelerate allows fp16 weights on CPU, without autocast)."""
    import numpy as np
    from PIL import Image

    from trainer.loop import train

    encoded_with = set()
    encode = ExampleSet._encode_pixels

    def recording(self, vae, pixels):
        encoded_with.add(vae.dtype)
        return encode(self, vae, pixels)

    monkeypatch.setattr(ExampleSet, "_encode_pixels", recording)
    config = _sdxl_te_config(example_dataset, tmp_path / "out", **{
        "train.mixed_precision": "fp16", "train.steps": 1, "sample.every_n_steps": 1, "sample.steps": 2})
    result = train(config)
    assert encoded_with == {torch.float32}
    assert np.isfinite(result.final_loss)
    image = np.asarray(Image.open(tmp_path / "out" / "samples" / "step-1" / "00.png"))
    assert image.std() > 0, "the fp16 sample decoded to a flat image"


class WatchedExamples(ExampleSet):
    """ExampleSet, counting the float32 image tensors (C, H, W) alive whenever the VAE encodes one."""

    peak = 0

    def _encode_pixels(self, vae, pixels):
        alive = sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor)
                    and obj.dtype == torch.float32 and obj.dim() == 3 and obj.shape[0] == 3)
        WatchedExamples.peak = max(WatchedExamples.peak, alive)
        return super()._encode_pixels(vae, pixels)


def test_images_stream_through_the_vae_instead_of_being_held_as_float32(example_dataset):
    from trainer.data import scan_dataset
    from trainer.models import load_base

    base = load_base(ModelConfig(base_model="tiny"))
    data = DataConfig(path=str(example_dataset), flip=True)
    items = scan_dataset(data)
    assert len(items) >= 10
    examples = WatchedExamples(base, items, data, 64, torch.device("cpu"), torch.float32, cache_text=False)
    assert len(examples.examples) == len(items)
    assert all(ex.pixels is None and ex.latent_mean is not None and ex.flipped_mean is not None
               for ex in examples.examples)
    # One image and its mirror at a time, however many images there are (all of them at once before).
    assert 1 <= WatchedExamples.peak <= 2, f"{WatchedExamples.peak} images were held as float32 pixels at once"


def test_captions_are_encoded_in_batches(example_dataset, monkeypatch):
    from trainer import examples as examples_module
    from trainer.data import scan_dataset
    from trainer.models import load_base
    from trainer.models.families import Family

    base = load_base(ModelConfig(base_model="tiny"))
    data = DataConfig(path=str(example_dataset))
    items = scan_dataset(data)
    captions = sorted({item.caption for item in items})
    assert len(captions) > 5
    batches = []

    class Counting(Family):
        def encode_text(self, pipe, chunk):
            batches.append(len(chunk))
            return super().encode_text(pipe, chunk)

    base.family = Counting()
    monkeypatch.setattr(examples_module, "TEXT_BATCH", 5)
    cached = examples_module.ExampleSet(base, items, data, 64, torch.device("cpu"), torch.float32, True).text_cache
    assert batches == [5] * (len(captions) // 5) + ([len(captions) % 5] if len(captions) % 5 else [])
    alone = base.family.encode_text(base.pipe, [captions[-1]])["encoder_hidden_states"]
    torch.testing.assert_close(cached[captions[-1]]["encoder_hidden_states"], alone, atol=1e-5, rtol=0)


def test_num_threads_is_checked_and_saved():
    with pytest.raises(ConfigError, match="train.num_threads must be >= 0"):
        load_config(None, {"train.num_threads": -1})
    assert load_config(None).train.num_threads == 1
    from trainer.config import config_to_toml

    assert "num_threads = 3" in config_to_toml(load_config(None, {"train.num_threads": 3}))


def test_the_job_runner_pins_the_configs_thread_count_not_its_parents(tmp_path, example_dataset, monkeypatch):
    """A runner started (or resumed) from a process with OMP_NUM_THREADS=1 still trains on the config's 2."""
    from trainer.jobs import Supervisor

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv(distributed.RANK_REPORT_ENV, str(tmp_path / "ranks"))
    config = load_config(None, {"data.path": str(example_dataset), "data.resolution": 64, "train.steps": 1,
                                "train.num_threads": 2, "train.log_with": "none", "export.dtype": "float32"})
    sup = Supervisor(tmp_path / "home")
    job_id = sup.submit(config)
    job = sup.wait(job_id, timeout=300)
    assert job["status"] == "done", sup.log_tail(job_id)
    report = json.loads((tmp_path / "ranks" / "rank-0.json").read_text())
    assert report["num_threads"] == 2
