"""Two jobs that finish at the same moment with the same LoRA name both land in the library.

Real processes race `publish` (released together by a barrier, many rounds); every round must end with
two sets of files, each holding its own job's bytes and a sidecar naming its own job.
"""

from __future__ import annotations

import json
import multiprocessing as mp

from trainer.config import TrainConfig
from trainer.jobs.library import publish
from trainer.jobs.paths import Home

ROUNDS = 25


def _finish(root: str, job_id: str, out: str, barrier) -> None:
    from pathlib import Path

    config = TrainConfig()
    config.export.name = "cats"
    files = [Path(out) / "cats.safetensors", Path(out) / "cats.peft.safetensors"]
    barrier.wait()
    publish(Home(Path(root)), job_id, files, config, step=5)


def test_two_runners_publishing_the_same_name_keep_both(tmp_path):
    ctx = mp.get_context("fork")
    for round_ in range(ROUNDS):
        home = Home(tmp_path / f"home{round_}").ensure()
        outs = {}
        for job in ("job-a", "job-b"):
            out = tmp_path / f"out-{round_}-{job}"
            out.mkdir()
            for name in ("cats.safetensors", "cats.peft.safetensors"):
                (out / name).write_bytes(job.encode() * 1000)
            outs[job] = out
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_finish, args=(str(home.root), job, str(out), barrier))
                 for job, out in outs.items()]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
        names = sorted(p.name for p in home.loras.iterdir())
        assert names == ["cats-2.json", "cats-2.peft.safetensors", "cats-2.safetensors",
                         "cats.json", "cats.peft.safetensors", "cats.safetensors"], (round_, names)
        owners = set()
        for stem in ("cats", "cats-2"):
            sidecar = json.loads((home.loras / f"{stem}.json").read_text())
            job = sidecar["job"]
            owners.add(job)
            assert sidecar["name"] == stem and "publishing" not in sidecar
            for suffix in (".safetensors", ".peft.safetensors"):
                assert (home.loras / f"{stem}{suffix}").read_bytes() == job.encode() * 1000
        assert owners == {"job-a", "job-b"}
