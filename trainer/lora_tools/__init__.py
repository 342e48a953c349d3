"""Tools on finished LoRAs: merge them into a base model, resize their rank, extract one from two checkpoints.

    from trainer.lora_tools.merge import merge_loras
    merge_loras("tiny", [("ink.safetensors", 0.7)], "merged.safetensors")       # a single-file checkpoint
    from trainer.lora_tools.resize import resize_lora
    report = resize_lora("ink.safetensors", rank=4, out="ink-r4.safetensors")   # report.overall: update kept
    from trainer.lora_tools.extract import extract_lora
    extract_lora("tuned.safetensors", "base.safetensors", rank=16, out="diff.safetensors")

Each tool reads and writes plain LoRA only (kohya `lora_down`/`lora_up`/`.alpha` or diffusers/PEFT keys in;
kohya keys out); LoHa, LoKr, DoRA and the other LyCORIS types are refused by name (see kinds.py).
"""
