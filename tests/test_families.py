"""The per-family interface: tiny architectures, prompt encoding, prediction targets, kohya names."""

from __future__ import annotations

import pytest
import torch
from families_helpers import FAMILIES, tiny_pipe

from trainer.config import ModelConfig
from trainer.models.families import FAMILIES as FAMILY_TABLE
from trainer.models.families import ImageSizes, family_for_pipeline
from trainer.models.loading import load_base
from trainer.models.single_file import ASSETS
from trainer.models.tiny import build_tiny_pipeline, weights_hash

CAPTIONS = ["a red circle", "two blue stars on a white background"]
# Change only if the architecture, the seed or torch's initialisers change (torch is pinned in CI).
EXPECTED_HASHES = {
    "sd15": "29398df06aa42d0a212643b8519a31eafc86399af83005e6d1e581573d45bb07",
    "sd2": "f7ce01d761ea78dd0e8031e14d6d7cd5fc312a797025c93757667431f324772f",
    "sdxl": "93bc49c5134febe081b4e71c680d618f90bd680cdfb157f9fc74360b23485731",
}


def _real_keys(family: str, component: str) -> set[str]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = ASSETS / family / component
    with init_empty_weights():
        if component == "unet":
            config = UNet2DConditionModel.load_config(folder)
            return set(UNet2DConditionModel.from_config(config).state_dict())
        cls = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        return set(cls(CLIPTextConfig.from_pretrained(folder)).state_dict())


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_models_are_the_real_architecture_small_and_deterministic(family):
    pipe = tiny_pipe(family)
    assert weights_hash(build_tiny_pipeline(family)) == weights_hash(pipe) == EXPECTED_HASHES[family], (
        f"tiny {family} weights changed (torch {torch.__version__}); if intended, update EXPECTED_HASHES")
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    for component in components:
        tiny = set(getattr(pipe, component).state_dict())
        assert tiny <= _real_keys(family, component), f"{component} keys not named as in the real {family}"
    size = sum(p.numel() for c in components + ["vae"] for p in getattr(pipe, c).parameters())
    assert size < 8_000_000
    unet = pipe.unet.config
    if family == "sd2":
        assert unet.use_linear_projection and list(unet.attention_head_dim) == [2, 4, 4, 4]
        assert pipe.text_encoder.config.hidden_act == "gelu" and pipe.tokenizer.pad_token == "!"
        assert pipe.scheduler.config.prediction_type == "v_prediction"
    if family == "sdxl":
        assert unet.addition_embed_type == "text_time" and len(unet.down_block_types) == 3
        assert list(unet.transformer_layers_per_block) == [1, 2, 3]
        assert pipe.text_encoder.config.hidden_size != pipe.text_encoder_2.config.hidden_size
    assert family_for_pipeline(pipe).name == family


@pytest.mark.parametrize("family", FAMILIES)
def test_text_conditioning_matches_the_pipelines_own(family):
    base = load_base(ModelConfig(base_model={"sd15": "tiny", "sd2": "tiny-sd2", "sdxl": "tiny-sdxl"}[family]))
    sizes = ImageSizes([(300, 200), (128, 128)], [(8, 0), (0, 0)], (128, 96))
    text = base.family.encode_text(base.pipe, CAPTIONS)
    kwargs = base.family.unet_kwargs(text, sizes)
    with torch.no_grad():
        theirs = base.pipe.encode_prompt(CAPTIONS, device="cpu", num_images_per_prompt=1,
                                         do_classifier_free_guidance=False)
    assert torch.equal(kwargs["encoder_hidden_states"], theirs[0])
    if family == "sdxl":
        extra = kwargs["added_cond_kwargs"]
        assert torch.equal(extra["text_embeds"], theirs[2])
        expected = base.pipe._get_add_time_ids((300, 200), (8, 0), (128, 96), torch.float32,
                                               base.pipe.text_encoder_2.config.projection_dim)
        assert torch.equal(extra["time_ids"][:1], expected)
        assert extra["time_ids"][1].tolist() == [128, 128, 0, 0, 128, 96]
    else:
        assert set(kwargs) == {"encoder_hidden_states"}


def test_v_prediction_target_in_the_training_step_is_the_schedulers_velocity():
    """The loop's own training_step, run on tiny SD 2: its loss is the error against get_velocity."""
    from diffusers import DDPMScheduler

    from trainer.config import load_config
    from trainer.examples import TrainBatch
    from trainer.loop import training_step

    base = load_base(ModelConfig(base_model="tiny-sd2"))
    assert base.prediction_type == "v_prediction"
    base.pipe.unet.requires_grad_(False)  # frozen, as in training (the LoRA layers are what learns)
    scheduler = DDPMScheduler.from_config(base.pipe.scheduler.config)
    config = load_config(None, {"model.base_model": "tiny-sd2"})
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = base.family.encode_text(base.pipe, CAPTIONS)
    sizes = ImageSizes([(128, 128)] * 2, [(0, 0)] * 2, (128, 128))
    torch.manual_seed(7)
    with torch.no_grad():
        loss = training_step(base.pipe.unet, scheduler, base, TrainBatch(latents, text, sizes), config)
    torch.manual_seed(7)  # the same noise and timesteps, drawn in the same order
    noise = torch.randn_like(latents)
    timesteps = torch.randint(0, 1000, (2,)).long()
    alphas = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    velocity = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents
    torch.testing.assert_close(scheduler.get_velocity(latents, noise, timesteps), velocity)
    with torch.no_grad():
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = base.pipe.unet(noisy, timesteps, encoder_hidden_states=text["encoder_hidden_states"]).sample
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(prediction, velocity))
    assert not torch.allclose(loss, torch.nn.functional.mse_loss(prediction, noise))


def test_prediction_override_and_zero_terminal_snr_reach_the_training_scheduler():
    from diffusers import DDPMScheduler

    epsilon = load_base(ModelConfig(base_model="tiny-sd2", prediction_type="epsilon"))
    assert epsilon.prediction_type == "epsilon"
    assert DDPMScheduler.from_config(epsilon.pipe.scheduler.config).config.prediction_type == "epsilon"
    zero = load_base(ModelConfig(base_model="tiny-sd2", zero_terminal_snr=True))
    training = DDPMScheduler.from_config(zero.pipe.scheduler.config)
    assert training.config.prediction_type == "v_prediction"
    assert float(training.alphas_cumprod[-1]) < 1e-6
    assert zero.pipe.scheduler.config.timestep_spacing == "trailing"
    plain = load_base(ModelConfig(base_model="tiny-sd2"))
    assert float(DDPMScheduler.from_config(plain.pipe.scheduler.config).alphas_cumprod[-1]) > 1e-3


def test_metadata_names_per_family():
    sd15, sd2, sdxl = (FAMILY_TABLE[name] for name in FAMILIES)
    assert sd15.metadata("epsilon") == {"ss_base_model_version": "sd_v1", "ss_v2": "False",
                                        "ss_v_parameterization": "False"}
    assert sd2.metadata("v_prediction") == {"ss_base_model_version": "sd_v2_768_v", "ss_v2": "True",
                                            "ss_v_parameterization": "True"}
    assert sd2.version_for("epsilon") == "sd_v2_512"
    assert sdxl.version_for("epsilon") == "sdxl_base_v1-0"
    assert (sd15.default_resolution, sd2.default_resolution, sdxl.default_resolution) == (512, 768, 1024)


def test_sdxl_kohya_unet_names_are_sd_scripts_and_diffusers_maps_them_back():
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    unet = tiny_pipe("sdxl").unet
    family = FAMILY_TABLE["sdxl"]
    names = [n for n, m in unet.named_modules() if n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))]
    keys = {family.kohya_unet_key(n, unet.config) + ".lora_down.weight": n for n in names}
    blocks = {k.split("_")[2] + "_" + k.split("_")[3] for k in keys}
    assert blocks == {"input_blocks", "middle_block", "output_blocks"}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_middle_block_1_transformer_blocks_2_attn2_to_out_0.lora_down.weight" in keys
    assert "lora_unet_output_blocks_0_1_transformer_blocks_2_attn2_to_k.lora_down.weight" in keys
    mapped = _maybe_map_sgm_blocks_to_diffusers({k: torch.zeros(1) for k in keys}, unet.config)
    renames = {"input_blocks": "down_blocks", "middle_block": "mid_block", "output_blocks": "up_blocks"}
    back = set()
    for key in mapped:  # diffusers renames the block kinds later, in _convert_unet_lora_key
        stem = key.removeprefix("lora_unet_").removesuffix(".lora_down.weight")
        kind = next(k for k in renames if stem.startswith(k))
        back.add(renames[kind] + stem[len(kind):])
    assert back == {n.replace(".", "_") for n in keys.values()}


def test_kohya_text_encoder_names():
    sd15, sdxl = FAMILY_TABLE["sd15"], FAMILY_TABLE["sdxl"]
    name = "encoder.layers.0.self_attn.q_proj"
    assert sd15.kohya_text_key("text_encoder", name) == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert (sdxl.kohya_text_key("text_encoder", name)
            == "lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
    assert (sdxl.kohya_text_key("text_encoder_2", "text_model." + name)
            == "lora_te2_text_model_encoder_layers_0_self_attn_q_proj")
