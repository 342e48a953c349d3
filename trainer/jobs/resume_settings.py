"""Resume a job with other memory settings: what its out-of-memory failure suggested, applied to its config.

    changed = apply_memory_settings(files, "a1b2c3d4", {"train.gradient_checkpointing": True})
    changed   # {"train.gradient_checkpointing": [False, True]}: the job's config.toml now has the new value

Only `trainer.checkpoint.MEMORY_CHANGES` may change: they decide what one step holds in memory, not what the
job's checkpoints hold, so the run continues from its newest checkpoint (`checkpoint.accept_changes`).
"""

from __future__ import annotations

from typing import Any

from trainer.checkpoint import BREAKING_REASONS, MEMORY_CHANGES, accept_changes
from trainer.config import changed_fields, load_config, save_config
from trainer.errors import JobError
from trainer.jobs.paths import JobFiles


def check_memory_settings(job_id: str, settings: dict[str, Any]) -> None:
    """Refuse any setting a resume may not change, naming it and why."""
    wrong = [key for key in settings if key not in MEMORY_CHANGES]
    if not wrong:
        return
    reasons = "; ".join(f"{key}: {BREAKING_REASONS[key]}" for key in wrong if key in BREAKING_REASONS)
    raise JobError(
        f"cannot resume with {', '.join(wrong)} changed: only memory settings change on a resume"
        + (f" ({reasons})" if reasons else ""),
        where=f"job {job_id}",
        fix=f"Resume with only {', '.join(MEMORY_CHANGES)}, or submit a new job with the other settings.")


def apply_memory_settings(files: JobFiles, job_id: str, settings: dict[str, Any]) -> dict[str, list[Any]]:
    """Write `settings` into the job's config.toml and let its checkpoints resume with them; returns each
    changed field as [old, new] ({} when the config already had them). A bad value is a ConfigError naming it."""
    check_memory_settings(job_id, settings)
    before = load_config(files.config)
    after = load_config(files.config, settings)
    new = changed_fields(before, after)
    if not new:
        return {}
    old = changed_fields(after, before)
    # The checkpoints accept the new values before the config has them: a crash in between leaves the old config,
    # which resumes as it always did.
    accept_changes(files.dir, new)
    save_config(after, files.config)
    return {key: [old.get(key), value] for key, value in new.items()}
