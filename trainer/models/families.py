"""Everything that differs between SD 1.x, SD 2.x and SDXL, in one place, behind one small interface.

    family = FAMILIES["sdxl"]
    unet_kwargs = family.encode_prompt(base, ["a photo of a cat"])    # encoder_hidden_states (+ SDXL extras)
    target = family.training_target(base.noise_scheduler, latents, noise, timesteps)
    family.kohya_unet_key("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", unet.config)
    family.base_model_version(prediction_type)                           # "sdxl_base_v1-0"

The loop, the exporter and the sampler ask the family; none of them tests `if sdxl`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.models.ldm_keys import ldm_unet_module

# peft targets on the CLIP text encoders (the attention projections, as the diffusers LoRA scripts use).
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass(frozen=True)
class Family:
    """SD 1.x: one CLIP ViT-L text encoder (last layer), epsilon prediction, 512 px."""

    name: str = "sd15"
    label: str = "SD 1.x"
    pipeline_class: str = "StableDiffusionPipeline"
    default_resolution: int = 512
    text_encoders: tuple[str, ...] = ("text_encoder",)
    kohya_text_prefixes: tuple[str, ...] = ("lora_te",)

    def encode_prompt(self, base, captions: list[str], sizes=None) -> dict:
        """UNet keyword arguments for `captions`; gradients flow when the text encoder trains."""
        pipe = base.pipe
        ids = _token_ids(pipe.tokenizer, captions, pipe.text_encoder.device)
        return {"encoder_hidden_states": pipe.text_encoder(ids)[0]}

    def prediction_type(self, scheduler_config, override: str = "auto") -> str:
        """`epsilon` or `v_prediction`: the override when set, else what the scheduler config says."""
        if override != "auto":
            return override
        return scheduler_config.get("prediction_type", "epsilon") or "epsilon"

    def training_target(self, scheduler, latents, noise, timesteps, prediction_type: str) -> torch.Tensor:
        """What the UNet learns to predict: the noise, or the velocity alpha_t * noise - sigma_t * x0."""
        if prediction_type == "v_prediction":
            return scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def base_model_version(self, prediction_type: str = "epsilon") -> str:
        """sd-scripts' `ss_base_model_version`, which A1111 and ComfyUI front-ends read."""
        return "sd_v1"

    def extra_metadata(self, prediction_type: str = "epsilon") -> dict[str, str]:
        return {"ss_v2": "False", "ss_v_parameterization": str(prediction_type == "v_prediction")}

    def kohya_unet_key(self, module_name: str, unet_config=None) -> str:
        """sd-scripts' name of a UNet LoRA layer: SD 1/2 keep the diffusers module path."""
        return "lora_unet_" + module_name.replace(".", "_")

    def kohya_text_key(self, component: str, module_name: str) -> str:
        """sd-scripts name: `lora_te_text_model_encoder_layers_0_self_attn_q_proj`, `lora_te1_…` (SDXL)."""
        prefix = self.kohya_text_prefixes[self.text_encoders.index(component)]
        if not module_name.startswith("text_model."):  # transformers >= 5.6 flattened CLIPTextModel
            module_name = "text_model." + module_name
        return f"{prefix}_" + module_name.replace(".", "_")

    def text_encoder_modules(self, pipe) -> dict[str, torch.nn.Module]:
        return {name: getattr(pipe, name) for name in self.text_encoders}


@dataclass(frozen=True)
class SD2Family(Family):
    """SD 2.x: OpenCLIP ViT-H (its penultimate layer: diffusers' weights stop there), v-prediction, 768 px."""

    name: str = "sd2"
    label: str = "SD 2.x"
    default_resolution: int = 768

    def base_model_version(self, prediction_type: str = "v_prediction") -> str:
        return "sd_v2_768_v" if prediction_type == "v_prediction" else "sd_v2_512"

    def extra_metadata(self, prediction_type: str = "v_prediction") -> dict[str, str]:
        return {"ss_v2": "True", "ss_v_parameterization": str(prediction_type == "v_prediction")}


@dataclass(frozen=True)
class SDXLFamily(Family):
    """SDXL: CLIP ViT-L + OpenCLIP bigG (penultimate layers, concatenated), pooled embeddings and the
    size/crop micro-conditioning `add_time_ids`, 1024 px."""

    name: str = "sdxl"
    label: str = "SDXL"
    pipeline_class: str = "StableDiffusionXLPipeline"
    default_resolution: int = 1024
    text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    kohya_text_prefixes: tuple[str, ...] = ("lora_te1", "lora_te2")

    def encode_prompt(self, base, captions: list[str], sizes=None) -> dict:
        """`sizes`: per caption `(original_hw, crop_top_left, target_hw)`; default: uncropped at full size."""
        pipe = base.pipe
        states = []
        pooled = None
        pairs = ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))
        for tokenizer, encoder in pairs:
            out = encoder(_token_ids(tokenizer, captions, encoder.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the projected end-of-text embedding of the second encoder
        if sizes is None:
            side = base.resolution
            sizes = [((side, side), (0, 0), (side, side))] * len(captions)
        time_ids = torch.tensor([[*orig, *crop, *target] for orig, crop, target in sizes],
                                dtype=pooled.dtype, device=pooled.device)
        return {"encoder_hidden_states": torch.cat(states, dim=-1),
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def base_model_version(self, prediction_type: str = "epsilon") -> str:
        return "sdxl_base_v1-0"

    def kohya_unet_key(self, module_name: str, unet_config=None) -> str:
        """sd-scripts names SDXL layers after the original UNet: `lora_unet_input_blocks_4_1_…`."""
        return "lora_unet_" + ldm_unet_module(module_name, unet_config).replace(".", "_")


FAMILIES: dict[str, Family] = {f.name: f for f in (Family(), SD2Family(), SDXLFamily())}


def family_of_pipeline(pipe) -> Family:
    """The family of a diffusers pipeline, from its components (not its name, which fine-tunes change)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return FAMILIES["sdxl"]
    unet = pipe.unet.config
    if unet.get("use_linear_projection") or pipe.text_encoder.config.hidden_act == "gelu":
        return FAMILIES["sd2"]
    return FAMILIES["sd15"]


def _token_ids(tokenizer, captions: list[str], device) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)
