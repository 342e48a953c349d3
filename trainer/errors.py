"""One exception family for every error a user can act on: what went wrong, where, and how to fix it.

    raise DatasetError("is not a readable image (truncated PNG)", where="cats/03.png",
                       fix="Re-export it or remove it.")
    # -> DatasetError: cats/03.png is not a readable image (truncated PNG). Re-export it or remove it.
"""

from __future__ import annotations


class StudioError(Exception):
    """Base of every LoRA Studio error: carries `what`, `where` (file or field) and `fix`."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.where} {self.what}" if self.where else self.what
        text = text[0].upper() + text[1:] if text and not self.where else text
        if self.fix:
            text = f"{text.rstrip('.')}. {self.fix}"
        return text

    def __str__(self) -> str:
        return self.message


class ConfigError(StudioError):
    """A config value or key is wrong; `problems` lists every one found, not just the first."""

    def __init__(self, problems: list[str], where: str | None = None):
        self.problems = list(problems)
        super().__init__("has invalid values", where=where)

    @property
    def message(self) -> str:
        head = f"Invalid config {self.where}" if self.where else "Invalid config"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)


class DatasetError(StudioError):
    """The dataset (a folder, an image, a caption, an archive) cannot be used as it is."""


class ModelError(StudioError):
    """The base model cannot be found, read or recognised."""


class LoraFileError(StudioError):
    """A LoRA file cannot be loaded: not safetensors, truncated, for another model family, unmatched keys."""


class TrainingError(StudioError):
    """Training cannot go on (NaN loss, out of memory, disk full); the message says what to change."""


class JobError(StudioError):
    """A job command cannot be carried out (unknown id, wrong status)."""


class OutOfMemory(TrainingError):
    """A run ran out of accelerator memory; carries what would fit, machine-readable (trainer/estimate/oom.py).

    `settings`: dotted fields and values that fit and that a resume accepts ({} when none is known);
    `estimate`: the bytes behind them (`budget`, `peak_bytes`, `fitted_bytes`)."""

    def __init__(self, what: str, fix: str | None = None, settings: dict | None = None,
                 estimate: dict | None = None):
        self.settings = dict(settings or {})
        self.estimate = dict(estimate or {})
        super().__init__(what, fix=fix)
