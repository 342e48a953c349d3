"""Previews: the adapter pool (one base pipeline, many LoRAs), LoRA file checks, grids and seeded rendering.

    from trainer.generate import AdapterPool
    pool = AdapterPool("tiny")
    pool.load("ink", "output/ink.safetensors")
    pool.generate("a lighthouse", seed=7, strengths={"ink": 0.7})
"""

from trainer.generate.grid import compose_grid
from trainer.generate.lorafile import LoraFile, LoraPlan, plan_lora, read_lora_file
from trainer.generate.pool import AdapterPool, LoadReport, load_pipeline
from trainer.generate.render import render, save_png

__all__ = ["AdapterPool", "LoadReport", "LoraFile", "LoraPlan", "compose_grid", "load_pipeline", "plan_lora",
           "read_lora_file", "render", "save_png"]
