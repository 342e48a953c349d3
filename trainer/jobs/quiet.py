"""Keep library notices that say nothing about the job out of its runner.log (its events carry what matters).

    quiet_libraries()   # in the job runner, before anything imports transformers or bitsandbytes

transformers warns once per process that CLIP's image processor falls back to PIL without torchvision, and
bitsandbytes (which diffusers imports when it is installed) that an optional CPU kernel package is missing;
neither is about training and both land in every job's log. diffusers warns on every `module.to(dtype)` that
"modules ... should be kept in float32: []" even when that list is empty (nothing is kept): that one goes
too, and the warning with modules in its list still shows. Their errors still show.
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported; children too
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _EmptyFloat32List) for f in modeling.filters):
        modeling.addFilter(_EmptyFloat32List())


class _EmptyFloat32List(logging.Filter):
    """Drops diffusers' "should be kept in float32: []" warning, which names no module."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()
