"""Everything that differs between SD 1.x, SD 2.x and SDXL, in one place behind one small interface.

    family = family_for_pipeline(pipe)                       # FAMILIES["sd15" | "sd2" | "sdxl"]
    text = family.encode_text(pipe, ["a photo of sks"])       # tensors the loop can cache
    pred = unet(noisy, t, **family.unet_kwargs(text, sizes)).sample
    family.kohya_unet_key("down_blocks.1.attentions.0.proj_in", unet.config)   # names in exported files
    family.version_for("v_prediction")                         # ss_base_model_version
    family.components                                          # ("unet", "text_encoder"[, "text_encoder_2"])

The loop, the export and the pool ask the family; none of them test `if sdxl:` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.errors import ModelError
from trainer.models.ldm_keys import ldm_unet_module


@dataclass(frozen=True)
class ImageSizes:
    """Per-sample geometry, used by families with size/crop micro-conditioning (SDXL)."""

    original: list[tuple[int, int]]
    """(height, width) of each source image before resizing."""
    crop_top_left: list[tuple[int, int]]
    """(top, left) of each crop, in resized pixels."""
    target: tuple[int, int]
    """(height, width) the batch trains at."""


class Family:
    """SD 1.x: one CLIP ViT-L text encoder, its last hidden state as cross-attention context, epsilon."""

    name = "sd15"
    label = "SD 1.x"
    pipeline_class = "StableDiffusionPipeline"
    base_model_version = "sd_v1"
    default_resolution = 512
    default_prediction_type = "epsilon"
    text_encoder_names: tuple[str, ...] = ("text_encoder",)
    kohya_text_prefixes: tuple[str, ...] = ("lora_te",)
    is_v2 = False
    vae_needs_fp32 = False
    """The family's VAE overflows in float16: it encodes in float32 when training in fp16, unless its config
    says it is fp16-safe (`force_upcast = false`, as in madebyollin/sdxl-vae-fp16-fix)."""

    @property
    def components(self) -> tuple[str, ...]:
        """The pipeline attributes a LoRA can wrap, UNet first: what the pool loads and the export writes."""
        return ("unet", *self.text_encoder_names)

    def tokenize(self, tokenizer, captions: list[str]) -> torch.Tensor:
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_text(self, pipe, captions: list[str]) -> dict[str, torch.Tensor]:
        """Text-encoder outputs for each caption (batch first); the loop may cache them."""
        return self.encode_text_trainable(pipe, captions)

    def encode_text_trainable(self, pipe, captions: list[str], encoders=None) -> dict[str, torch.Tensor]:
        """As `encode_text`, with gradients; `encoders` (in `text_encoder_names` order) replace the pipeline's
        own, so a training loop can run them through their distributed wrappers (DDP all-reduces them)."""
        (encoder,) = encoders or (pipe.text_encoder,)
        ids = self.tokenize(pipe.tokenizer, captions).to(pipe.text_encoder.device)
        return {"encoder_hidden_states": encoder(ids)[0]}

    def vae_dtype(self, vae, compute_dtype: torch.dtype) -> torch.dtype:
        """The dtype the VAE encodes training images in (see `vae_needs_fp32`)."""
        if compute_dtype == torch.float16 and self.vae_needs_fp32 and vae.config.get("force_upcast", True):
            return torch.float32
        return compute_dtype

    def unet_kwargs(self, text: dict[str, torch.Tensor], sizes: ImageSizes | None = None) -> dict:
        return {"encoder_hidden_states": text["encoder_hidden_states"]}

    def version_for(self, prediction_type: str) -> str:
        """sd-scripts' `ss_base_model_version` for a run with this prediction type."""
        return self.base_model_version

    def metadata(self, prediction_type: str) -> dict[str, str]:
        """The `ss_*` fields that tell A1111, Forge and ComfyUI front-ends which model a LoRA is for."""
        return {"ss_base_model_version": self.version_for(prediction_type), "ss_v2": str(self.is_v2),
                "ss_v_parameterization": str(prediction_type == "v_prediction")}

    def kohya_unet_key(self, module_name: str, unet_config=None) -> str:
        """kohya/A1111 key stem of a UNet module: SD 1.x/2.x use diffusers names with '_' for '.'."""
        return "lora_unet_" + module_name.replace(".", "_")

    def kohya_text_key(self, component: str, module_name: str) -> str:
        """kohya/A1111 key stem of a text-encoder module: `lora_te_text_model_encoder_layers_0_…`."""
        prefix = self.kohya_text_prefixes[self.text_encoder_names.index(component)]
        if not module_name.startswith("text_model."):  # transformers >= 5.6 flattened CLIPTextModel
            module_name = "text_model." + module_name
        return f"{prefix}_" + module_name.replace(".", "_")


class SD2Family(Family):
    """SD 2.x: OpenCLIP ViT-H (its penultimate layer: diffusers' weights stop there), v-prediction, 768 px."""

    name = "sd2"
    label = "SD 2.x"
    base_model_version = "sd_v2_768_v"
    default_resolution = 768
    default_prediction_type = "v_prediction"
    is_v2 = True

    def version_for(self, prediction_type: str) -> str:
        return "sd_v2_768_v" if prediction_type == "v_prediction" else "sd_v2_512"


class SDXLFamily(Family):
    """SDXL: CLIP ViT-L and OpenCLIP bigG (penultimate layers, concatenated), the pooled bigG embedding
    and the size/crop micro-conditioning `add_time_ids`, 1024 px."""

    name = "sdxl"
    label = "SDXL"
    pipeline_class = "StableDiffusionXLPipeline"
    base_model_version = "sdxl_base_v1-0"
    default_resolution = 1024
    text_encoder_names = ("text_encoder", "text_encoder_2")
    kohya_text_prefixes = ("lora_te1", "lora_te2")
    vae_needs_fp32 = True  # diffusers' SDXL pipelines and training scripts upcast it for the same reason

    def encode_text_trainable(self, pipe, captions: list[str], encoders=None) -> dict[str, torch.Tensor]:
        states = []
        pooled = None
        device = pipe.text_encoder.device
        for tokenizer, encoder in zip((pipe.tokenizer, pipe.tokenizer_2),
                                      encoders or (pipe.text_encoder, pipe.text_encoder_2), strict=True):
            out = encoder(self.tokenize(tokenizer, captions).to(device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the second encoder's projected end-of-text embedding
        return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": pooled}

    def unet_kwargs(self, text: dict[str, torch.Tensor], sizes: ImageSizes | None = None) -> dict:
        if sizes is None:
            raise ValueError("SDXL needs the image sizes for its add_time_ids micro-conditioning")
        pooled = text["text_embeds"]
        time_ids = torch.tensor([[*orig, *crop, *sizes.target] for orig, crop in
                                 zip(sizes.original, sizes.crop_top_left, strict=True)],
                                dtype=pooled.dtype, device=pooled.device)
        return {"encoder_hidden_states": text["encoder_hidden_states"],
                "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def kohya_unet_key(self, module_name: str, unet_config=None) -> str:
        """sd-scripts names SDXL layers after the original UNet: `lora_unet_input_blocks_4_1_…`."""
        if unet_config is None:
            raise ValueError("SDXL kohya names need the UNet config (layers per block, block types)")
        return "lora_unet_" + ldm_unet_module(module_name, unet_config).replace(".", "_")


SD15, SD2, SDXL = Family(), SD2Family(), SDXLFamily()
FAMILIES: dict[str, Family] = {f.name: f for f in (SD15, SD2, SDXL)}


def family_for_pipeline(pipe) -> Family:
    """The family of a diffusers pipeline, from its components (fine-tunes keep them, not their names)."""
    if getattr(pipe, "text_encoder_2", None) is not None or pipe.unet.config.get("addition_embed_type"):
        if pipe.unet.config.get("addition_embed_type") != "text_time":
            raise ModelError(f"has a UNet with {pipe.unet.config.get('addition_embed_type')!r} conditioning",
                             where="model.base_model", fix="Use an SD 1.x, SD 2.x or SDXL base model.")
        return SDXL
    if pipe.unet.config.get("use_linear_projection") or pipe.text_encoder.config.hidden_act == "gelu":
        return SD2
    return SD15
