"""Settings that are fine alone but not together: refused before the GPU is busy, naming both fields; or,
where a combination can work (min-SNR with zero terminal SNR), made to work as diffusers' scripts do."""

from __future__ import annotations

import pytest
import torch

from trainer.config import ModelConfig, NetworkConfig, TrainConfig, config_from_dict
from trainer.errors import ConfigError
from trainer.models import load_base
from trainer.models.families import ImageSizes

FAMILY_MODELS = ["tiny", "tiny-sd2", "tiny-sdxl"]


def test_keep_tokens_without_tag_shuffling_is_refused_naming_both_fields():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"keep_tokens": 1}})
    (problem,) = info.value.problems
    assert "data.keep_tokens = 1" in problem and "data.shuffle_tags" in problem
    assert config_from_dict({"data": {"keep_tokens": 1, "shuffle_tags": True}}).data.keep_tokens == 1


@pytest.mark.parametrize("base_model", FAMILY_MODELS)
def test_every_preset_is_valid_with_every_family(base_model):
    from app.forms import PRESETS

    assert any(p.get("train.min_snr_gamma") for p in PRESETS.values()), "a preset turns min-SNR on"
    for name, preset in PRESETS.items():
        for zero_snr in (False, True):
            data: dict = {"model": {"base_model": base_model, "zero_terminal_snr": zero_snr}}
            for key, value in preset.items():
                section, field = key.split(".")
                data.setdefault(section, {})[field] = value
            config = config_from_dict(data, where=f"preset {name}")
            assert config.model.base_model == base_model


def _generator_drawing_timestep(latent_shape, wanted: int) -> int:
    """A seed whose generator, drawn as the loop's `_draw_noise` draws (noise, then timestep), gives `wanted`."""
    for seed in range(50_000):
        g = torch.Generator().manual_seed(seed)
        torch.randn(latent_shape, generator=g)
        if int(torch.randint(0, 1000, (1,), generator=g)) == wanted:
            return seed
    raise AssertionError("no seed found")


@pytest.mark.parametrize("base_model", FAMILY_MODELS)
def test_min_snr_with_zero_terminal_snr_trains_the_last_timestep(base_model):
    """SNR is 0 at the last timestep with zero terminal SNR; min(SNR, gamma) / SNR was 0/0 = NaN there."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from trainer.examples import TrainBatch
    from trainer.loop import min_snr_weight, training_step
    from trainer.network import add_lora

    config = TrainConfig(model=ModelConfig(base_model=base_model, zero_terminal_snr=True))
    config.train.min_snr_gamma = 5.0
    base = load_base(config.model)
    add_lora(base, config.network)
    scheduler = DDPMScheduler.from_config(base.pipe.scheduler.config)
    snr = compute_snr(scheduler, torch.arange(1000))
    assert float(snr[-1]) == 0.0
    weights = min_snr_weight(snr, 5.0, base.prediction_type)
    assert torch.isfinite(weights).all() and float(weights[0]) < 0.01
    assert float(weights[-1]) == (0.0 if base.prediction_type == "v_prediction" else 1.0)

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(_generator_drawing_timestep(latents.shape[1:], 999))]
    text = base.family.encode_text(base.pipe, ["a red square"])
    sizes = ImageSizes([(128, 128)], [(0, 0)], (128, 128))
    loss = training_step(base.pipe.unet, scheduler, base, TrainBatch(latents, text, sizes), config, generators)
    assert torch.isfinite(loss), f"loss at timestep 999 is {loss}"
    loss.backward()
    grads = [p.grad for p in base.pipe.unet.parameters() if p.requires_grad]
    assert grads and all(torch.isfinite(g).all() for g in grads if g is not None)


def test_target_modules_that_match_no_layer_are_refused_before_peft():
    from trainer.network import add_lora

    base = load_base(ModelConfig(base_model="tiny"))
    for names in (["to_qq"], ["to_q", "attn.to_kk"]):  # peft silently ignores the 2nd list's bad name
        with pytest.raises(ConfigError) as info:
            add_lora(base, NetworkConfig(target_modules=names))
        message = str(info.value)
        assert "network.target_modules" in message and repr(names[-1]) in message
        assert "to_q, to_k, to_v, to_out.0" in message, message
    assert not any("lora" in n for n, _ in base.pipe.unet.named_modules()), "refused before any layer is added"
    add_lora(base, NetworkConfig(target_modules=["to_q", "proj_in", "ff.net.2"]))
    wrapped = {n.rsplit(".", 1)[0] for n, _ in base.pipe.unet.named_modules() if n.endswith(".lora_A")}
    assert any(n.endswith("attn1.to_q") for n in wrapped) and any(n.endswith("proj_in") for n in wrapped)


def test_nan_advice_blames_the_learning_rate_only_after_an_update():
    from trainer.loop import NAN_ADVICE, nan_advice

    config = TrainConfig()
    first = nan_advice(config, "fp16", step=1)
    assert "learning rate is not the cause" in first and "train.mixed_precision = 'fp16'" in first
    assert "optim.learning_rate" not in first
    assert "train.mixed_precision" not in nan_advice(config, "bf16", step=1)
    assert nan_advice(config, "bf16", step=7) == NAN_ADVICE and "optim.learning_rate" in NAN_ADVICE
