"""Training jobs: a SQLite job table, a supervisor that queues and starts detached runner processes,
and the files each runner writes (events, heartbeat, checkpoints, outputs) under `<home>/jobs/<id>/`.

    from trainer.jobs import Supervisor, default_home
    sup = Supervisor()                  # LORA_STUDIO_HOME or ~/.lora-studio
    job_id = sup.submit(config)
"""

from trainer.jobs.paths import default_home
from trainer.jobs.supervisor import Supervisor

__all__ = ["Supervisor", "default_home"]
