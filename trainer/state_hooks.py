"""accelerate save/load hooks that checkpoint only the LoRA tensors, not the frozen multi-GB base model.

accelerate's `save_state` would otherwise write every weight of each prepared model; diffusers' own training
scripts use the same hook mechanism for the same reason.

Each trained component's file holds diffusers/PEFT keys with the adapter config in its metadata, so a
checkpoint's LoRA also loads as it is in diffusers and in the adapter pool (to compare steps in a grid). The
file is numbered by the component's place in the family's order (`lora_0.safetensors` is the UNet's, then
`text_encoder`, `text_encoder_2`), and the model accelerate hands a hook is matched to its component by
identity, never by its position in accelerate's list: a checkpoint resumes whatever order the models came in.
"""

from __future__ import annotations

from pathlib import Path

from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from trainer.export import adapter_metadata
from trainer.network import ADAPTER

LORA_FILE = "lora_{index}.safetensors"


def register_lora_state_hooks(accelerator, base, lora_configs) -> None:
    components = list(lora_configs)  # the family's order, as add_lora built it

    def component_of(model) -> str:
        unwrapped = accelerator.unwrap_model(model)
        for name in components:
            if getattr(base.pipe, name) is unwrapped:
                return name
        raise RuntimeError(f"a model handed to the checkpoint hooks is none of the trained {components}")

    def save_hook(models, weights, output_dir):
        for model in models:
            component = component_of(model)
            tensors = {f"{component}.{k}": v.detach().cpu().contiguous()
                       for k, v in get_peft_model_state_dict(accelerator.unwrap_model(model),
                                                             adapter_name=ADAPTER).items()}
            if accelerator.is_main_process:
                metadata = {"format": "pt", **adapter_metadata({component: lora_configs[component]})}
                path = Path(output_dir) / LORA_FILE.format(index=components.index(component))
                save_file(tensors, str(path), metadata=metadata)
        weights.clear()

    def load_hook(models, input_dir):
        while models:
            model = models.pop()
            component = component_of(model)
            prefix = f"{component}."
            path = Path(input_dir) / LORA_FILE.format(index=components.index(component))
            saved = load_file(str(path))
            foreign = [k for k in saved if not k.startswith(prefix)]
            if foreign:
                raise RuntimeError(f"checkpoint file {path} should hold {component} tensors, found {foreign[:3]}")
            tensors = {k.removeprefix(prefix): v for k, v in saved.items()}
            result = set_peft_model_state_dict(accelerator.unwrap_model(model), tensors, adapter_name=ADAPTER)
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(f"checkpoint {input_dir} holds LoRA keys this model lacks: {unexpected[:3]}")

    assert components, "no LoRA component to checkpoint"
    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
