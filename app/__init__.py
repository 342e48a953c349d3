"""The LoRA Studio web UI (Gradio): widgets and wiring over `trainer/`; start it with `lora-studio serve`."""
