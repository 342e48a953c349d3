"""Everything that differs between Stable Diffusion families, in one place behind one small interface.

    family = family_for_pipeline(pipe)
    text = family.encode_text(pipe, ["a photo of sks"])     # tensors the loop can cache
    pred = unet(noisy, t, **family.unet_kwargs(text, sizes)).sample

The loop, the export and the pool ask the family; none of them test `if sdxl:` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSizes:
    """Per-sample geometry, used by families with size/crop micro-conditioning (SDXL)."""

    original: list[tuple[int, int]]
    crop_top_left: list[tuple[int, int]]
    target: tuple[int, int]


class Family:
    """SD 1.x: one CLIP text encoder, its last hidden state as cross-attention context."""

    name = "sd15"
    base_model_version = "sd_v1"
    default_resolution = 512
    default_prediction_type = "epsilon"
    text_encoder_names: tuple[str, ...] = ("text_encoder",)
    kohya_text_prefixes: tuple[str, ...] = ("lora_te",)
    is_v2 = False

    def tokenize(self, tokenizer, captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_text(self, pipe, captions: list[str]) -> dict[str, torch.Tensor]:
        """Text-encoder outputs for each caption (batch first); the loop may cache them."""
        return self.encode_text_trainable(pipe, captions)

    def encode_text_trainable(self, pipe, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenize(pipe.tokenizer, captions).to(pipe.text_encoder.device)
        return {"encoder_hidden_states": pipe.text_encoder(ids)[0]}

    def unet_kwargs(self, text: dict[str, torch.Tensor], sizes: ImageSizes | None = None) -> dict:
        return {"encoder_hidden_states": text["encoder_hidden_states"]}

    def kohya_unet_key(self, module_name: str) -> str:
        """kohya/A1111 key stem of a UNet module: SD 1.x/2.x use diffusers names with '_' for '.'."""
        return "lora_unet_" + module_name.replace(".", "_")


SD15 = Family()
FAMILIES = {SD15.name: SD15}


def family_for_pipeline(pipe) -> Family:
    """Tell the family from the pipeline's UNet config."""
    config = pipe.unet.config
    if getattr(config, "addition_embed_type", None) == "text_time":
        raise NotImplementedError("SDXL pipelines are not supported yet")
    if config.cross_attention_dim in (1024,) or getattr(pipe.scheduler.config, "prediction_type", "") == "v_prediction":
        raise NotImplementedError("SD 2.x pipelines are not supported yet")
    return SD15
