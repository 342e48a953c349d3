"""Training for real on the tiny model: the loss falls, the weights move, runs repeat, files load everywhere."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import eval_loss, image_array, lora_modules
from trainer.export import read_lora_metadata
from trainer.loop import train
from trainer.models.tiny import load_tiny_pipeline


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, example_dataset):
    """One run that overfits a single image; shared by the tests below (training is the slow part)."""
    from trainer.config import load_config

    data = tmp_path_factory.mktemp("one-image")
    for suffix in (".png", ".txt"):
        shutil.copy(example_dataset / f"01{suffix}", data / f"01{suffix}")
    out = tmp_path_factory.mktemp("overfit")
    config = load_config(None, {"data.path": str(data), "data.resolution": 64, "train.steps": 60,
                                "optim.learning_rate": 5e-3, "export.output_dir": str(out),
                                "export.name": "shapes", "export.dtype": "float32"})
    result = train(config)
    caption = (data / "01.txt").read_text().strip()
    return config, result, data / "01.png", caption


def test_overfitting_lowers_the_loss_clearly(overfit_run):
    _, result, image, caption = overfit_run
    base = load_tiny_pipeline("tiny")
    before = eval_loss(base, image, caption)
    base.load_lora_weights(str(result.outputs[1]), adapter_name="trained")
    after = eval_loss(base, image, caption)
    assert after < 0.85 * before, (before, after)


def test_lora_weights_changed_from_their_initialisation(overfit_run):
    _, result, _, _ = overfit_run
    tensors = load_file(str(result.outputs[1]))
    ups = [v for k, v in tensors.items() if k.endswith("lora_B.weight")]
    assert len(ups) == 128
    assert all(v.abs().max() > 0 for v in ups)  # lora_B starts at zero


@pytest.mark.parametrize("which", [0, 1], ids=["kohya", "peft"])
def test_file_loads_in_a_fresh_pipeline_and_wraps_every_attention_projection(overfit_run, which):
    _, result, _, caption = overfit_run
    pipe = load_tiny_pipeline("tiny")
    base_image = image_array(pipe, caption)
    pipe.load_lora_weights(str(result.outputs[which]), adapter_name="trained")
    wrapped = lora_modules(pipe.unet, "trained")
    projections = [n for n, _ in pipe.unet.named_modules()
                   if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith("to_out.0")]
    assert sorted(wrapped) == sorted(projections)
    assert not np.array_equal(image_array(pipe, caption), base_image)


def test_both_files_give_the_same_image(overfit_run):
    _, result, _, caption = overfit_run
    images = []
    for path in result.outputs[:2]:
        pipe = load_tiny_pipeline("tiny")
        pipe.load_lora_weights(str(path), adapter_name="trained")
        images.append(image_array(pipe, caption))
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)


def test_strength_zero_is_exactly_the_base_image(overfit_run):
    _, result, _, caption = overfit_run
    pipe = load_tiny_pipeline("tiny")
    base_image = image_array(pipe, caption)
    pipe.load_lora_weights(str(result.outputs[0]), adapter_name="trained")
    pipe.set_adapters(["trained"], adapter_weights=[0.0])
    assert np.array_equal(image_array(pipe, caption), base_image)
    pipe.set_adapters(["trained"], adapter_weights=[1.0])
    assert not np.array_equal(image_array(pipe, caption), base_image)


def test_metadata_describes_the_run(overfit_run):
    config, result, _, _ = overfit_run
    for path in result.outputs[:2]:
        meta = read_lora_metadata(path)
        assert meta["ss_network_dim"] == "8" and float(meta["ss_network_alpha"]) == 8.0
        assert meta["ss_base_model_version"] == "sd_v1"
        assert meta["ss_output_name"] == "shapes" and meta["ss_steps"] == "60"
        assert meta["lora_studio_base_model"] == "tiny"
        assert meta["lora_studio_config_hash"] == config.hash()
    kohya = load_file(str(result.outputs[0]))
    assert kohya["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha"].item() == 8.0
    assert (result.outputs[0].parent / "config.toml").is_file()


def test_same_config_and_seed_give_identical_tensors(quick_config, tmp_path):
    first = train(quick_config(**{"export.output_dir": str(tmp_path / "a")}))
    second = train(quick_config(**{"export.output_dir": str(tmp_path / "b")}))
    a, b = load_file(str(first.outputs[1])), load_file(str(second.outputs[1]))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.losses == second.losses
    other = train(quick_config(**{"export.output_dir": str(tmp_path / "c"), "train.seed": 7}))
    c = load_file(str(other.outputs[1]))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_events_report_progress_and_done(quick_config):
    events = []
    result = train(quick_config(**{"sample.every_n_steps": 2, "sample.steps": 2}), on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert [e.step for e in events if e.kind == "progress"] == [1, 2, 3, 4]
    samples = [e for e in events if e.kind == "sample"]
    assert [s.step for s in samples] == [2, 4]
    assert all(p.endswith(".png") for s in samples for p in s.paths)
    assert all(len(s.prompts) == len(s.paths) == 1 and s.prompts[0] for s in samples)  # the first caption
    assert events[-1].outputs == [str(p) for p in result.outputs]


def test_stop_flag_writes_a_checkpoint_and_a_usable_lora(quick_config, tmp_path):
    calls = []
    result = train(quick_config(**{"train.steps": 10}), should_stop=lambda: len(calls) >= 2 or calls.append(1))
    assert result.stopped and result.step == 3
    assert (tmp_path / "out" / "checkpoints" / "step-3" / "COMPLETE").is_file()
    assert result.outputs[0].is_file()


def test_resume_matches_an_uninterrupted_run(quick_config, tmp_path):
    full = train(quick_config(**{"train.steps": 6, "export.output_dir": str(tmp_path / "full")}))
    part_dir = tmp_path / "part"
    train(quick_config(**{"train.steps": 6, "export.output_dir": str(part_dir)}),
          should_stop=lambda: True)  # stops after step 1 with a checkpoint
    resumed = train(quick_config(**{"train.steps": 6, "export.output_dir": str(part_dir)}), resume_from=part_dir)
    a, b = load_file(str(full.outputs[1])), load_file(str(resumed.outputs[1]))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    assert resumed.losses == full.losses[1:]


def test_nan_loss_stops_with_advice(quick_config):
    from trainer.errors import TrainingError

    events = []
    with pytest.raises(TrainingError, match="(?i)loss became nan") as info:
        train(quick_config(**{"optim.learning_rate": 1e30, "optim.max_grad_norm": 0.0, "train.steps": 20}),
              on_event=events.append)
    assert "learning_rate" in info.value.fix
    assert events[-1].kind == "failed"


def test_every_loop_option_trains(quick_config):
    """Accumulation, gradient checkpointing, min-SNR, noise offset, cosine warmup, TE LoRA: finite losses."""
    events = []
    result = train(quick_config(**{
        "train.gradient_accumulation_steps": 2, "train.gradient_checkpointing": True, "train.min_snr_gamma": 5.0,
        "train.noise_offset": 0.05, "optim.lr_scheduler": "cosine", "optim.warmup_steps": 2,
        "train.batch_size": 2, "network.train_text_encoder": True, "optim.text_encoder_lr": 5e-5,
    }), on_event=events.append)
    assert result.step == 4 and all(np.isfinite(result.losses))
    lrs = [e.lr for e in events if e.kind == "progress"]
    assert lrs[0] == pytest.approx(0.5e-4) and lrs[1] == pytest.approx(1e-4) and lrs[-1] < lrs[1]
    started = events[0]
    assert not started.cached_text  # a trained text encoder cannot be cached


def test_a_cpu_lora_run_gets_the_fused_attention_and_another_adapter_type_does_not(quick_config, tiny_pipe):
    from diffusers.models.attention_processor import Attention

    modules = sum(isinstance(m, Attention) for m in tiny_pipe.unet.modules())
    assert modules > 0
    for network_type, expected in (("lora", modules), ("loha", 0)):
        events = []
        result = train(quick_config(**{"network.type": network_type, "train.steps": 2}), on_event=events.append)
        assert events[0].kind == "started" and events[0].fused_attention == expected
        assert all(np.isfinite(result.losses))


def test_bf16_mixed_precision_runs_on_cpu(quick_config):
    result = train(quick_config(**{"train.mixed_precision": "bf16"}))
    assert all(np.isfinite(result.losses)) and result.outputs[0].is_file()
