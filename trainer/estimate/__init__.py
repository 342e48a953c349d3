"""Will a run fit? The peak accelerator memory of one training step, estimated from the model's architecture.

    est = estimate_step(load_config("run.toml"))          # Estimate: parts, peak_bytes, settings
    est = estimate_step(config, family="sdxl")             # the published SDXL base, no weights needed
    found = fit_settings(config, parse_size("8GB"))        # the first combination of changes that fits

`build` makes the architecture on the meta device, `tracker` counts the bytes a traced step keeps alive,
`step` adds them up by part, `fit` tries cheaper settings in order.
"""

from trainer.estimate.fit import FitResult, fit_settings, format_bytes, parse_size
from trainer.estimate.step import Estimate, estimate_step

__all__ = ["Estimate", "FitResult", "estimate_step", "fit_settings", "format_bytes", "parse_size"]
