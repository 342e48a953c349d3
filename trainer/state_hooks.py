"""accelerate save/load hooks that checkpoint only the LoRA tensors, not the frozen multi-GB base model.

accelerate's `save_state` would otherwise write every weight of each prepared model; diffusers' own training
scripts use the same hook mechanism for the same reason.

Each trained component's file (`lora_0.safetensors` is the UNet's) holds diffusers/PEFT keys with the adapter
config in its metadata, so a checkpoint's LoRA also loads as it is in diffusers and in the adapter pool
(to compare steps in a grid).
"""

from __future__ import annotations

from pathlib import Path

from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from trainer.export import adapter_metadata
from trainer.network import ADAPTER

LORA_FILE = "lora_{index}.safetensors"


def register_lora_state_hooks(accelerator, base, lora_configs) -> None:
    components = list(lora_configs)

    def save_hook(models, weights, output_dir):
        for index, model in enumerate(models):
            component = components[index]
            unwrapped = accelerator.unwrap_model(model)
            tensors = {f"{component}.{k}": v.detach().cpu().contiguous()
                       for k, v in get_peft_model_state_dict(unwrapped, adapter_name=ADAPTER).items()}
            if accelerator.is_main_process:
                metadata = {"format": "pt", **adapter_metadata({component: lora_configs[component]})}
                save_file(tensors, str(Path(output_dir) / LORA_FILE.format(index=index)), metadata=metadata)
        weights.clear()

    def load_hook(models, input_dir):
        for index in range(len(models) - 1, -1, -1):
            model = accelerator.unwrap_model(models.pop())
            prefix = f"{components[index]}."
            tensors = {k.removeprefix(prefix): v
                       for k, v in load_file(str(Path(input_dir) / LORA_FILE.format(index=index))).items()}
            result = set_peft_model_state_dict(model, tensors, adapter_name=ADAPTER)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(f"checkpoint {input_dir} holds LoRA keys this model lacks: {unexpected[:3]}")

    assert components, "no LoRA component to checkpoint"
    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
