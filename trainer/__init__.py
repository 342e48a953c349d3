"""LoRA Studio's core: config, data, models, LoRA, the training loop, export, generation and jobs.

The web UI (`app/`), the CLI (`trainer.cli`) and the job runner all call this package; it never imports gradio.
"""

__version__ = "0.1.0"
