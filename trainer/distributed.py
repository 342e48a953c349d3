"""Training on several processes: GPUs on one box, CPU processes (gloo), or several machines.

    launch_train("run.toml", num_processes=2)                      # blocks; returns the exit code
    proc = start_train("run.toml", num_processes=2, events_path="events.jsonl", stop_file="stop")

Both run `python -m accelerate.commands.launch --multi_gpu --num_processes N -m trainer.cli train --config …`
as an argument list (never a shell string): accelerate's own launcher (torch.distributed.run underneath) starts
N copies of the same `train` entry point, and `trainer.loop.train` inside each one sees the world through its
`Accelerator`. `lora-studio train --num-processes N` and the job runner come through here; on a cluster
`accelerate launch` on each machine starts the same entry point directly.

The rest of this module is what the loop needs to behave as one of many: the rank's share of a batch,
per-sample random numbers that do not depend on the number of processes, an agreed stop flag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from trainer.errors import TrainingError

# Set by torch.distributed.run / accelerate in every process it starts.
_LAUNCHED_ENV = ("LOCAL_RANK", "RANK")
# Debug/test hook: a folder where every rank writes a hash of its LoRA tensors at the end of training.
RANK_REPORT_ENV = "LORA_STUDIO_RANK_REPORT_DIR"


def in_launched_process() -> bool:
    """True inside a process started by accelerate launch / torchrun (so `train` must not launch again)."""
    return any(name in os.environ for name in _LAUNCHED_ENV)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def accelerator_kwargs(find_unused_parameters: bool = False) -> dict:
    """Extra `Accelerator` arguments: CPU-only worlds need `cpu=True`, or accelerate would not join them (gloo).

    `find_unused_parameters` tells DDP that some trained parameters get no gradient in a step: SDXL conditions
    on the first text encoder's penultimate layer, so the LoRA of its last layer never does (diffusers'
    train_dreambooth_lora_sdxl.py sets it for the same reason).
    """
    kwargs: dict = {}
    if env_world_size() > 1 and not torch.cuda.is_available():
        kwargs["cpu"] = True
    if find_unused_parameters and env_world_size() > 1:
        from accelerate import DistributedDataParallelKwargs

        kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return kwargs


def check_world(accelerator) -> None:
    """Refuse a launch whose processes did not join one world: each would think it is rank 0 and write files."""
    expected = env_world_size()
    if expected != accelerator.num_processes:
        raise TrainingError(
            f"was launched as {expected} processes but accelerate joined {accelerator.num_processes}",
            where="distributed launch",
            fix="Launch with `lora-studio train --num-processes N` or `accelerate launch --multi_gpu "
                "--num_processes N -m trainer.cli train …`; on a machine without GPUs set ACCELERATE_USE_CPU=true.")


def with_world_size(config, world: int):
    """The config with `train.num_processes` set to the world accelerate really launched (saved, checked on resume).

    A config that asks for several processes in a process nobody launched is refused, not trained on one.
    """
    wanted = config.train.num_processes
    if wanted > 1 and not in_launched_process():
        raise TrainingError(
            f"asks for {wanted} processes but this process was not started by a launcher",
            where="train.num_processes",
            fix="Run `lora-studio train --num-processes N` (or trainer.distributed.launch_train) instead of calling "
                "train() directly, or set train.num_processes = 1.")
    if wanted == world:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, num_processes=world))


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_command(config_path: str | Path, num_processes: int, *, gpus: str | None = None,
                   resume_from: str | Path | None = None, workdir: str | Path | None = None,
                   events_path: str | Path | None = None, stop_file: str | Path | None = None,
                   main_process_port: int = 0) -> tuple[list[str], dict[str, str]]:
    """The argument list and environment that start `num_processes` copies of `lora-studio train`."""
    if gpus:
        num_processes = len([g for g in gpus.split(",") if g.strip()])
    if num_processes < 1:
        raise TrainingError(f"num_processes must be >= 1, got {num_processes}", where="train.num_processes",
                            fix="Pass --num-processes 2 (or more) to train on several processes.")
    env = dict(os.environ)
    available = gpu_count()
    if available:
        if gpus is None and num_processes > available:
            raise TrainingError(f"asks for {num_processes} processes but {available} GPU(s) are visible",
                                where="train.num_processes",
                                fix=f"Use --num-processes {available} or fewer, or pick GPUs with --gpus.")
    else:
        if gpus:
            raise TrainingError(f"names GPUs {gpus!r} but no CUDA GPU is visible", where="--gpus",
                                fix="Drop --gpus to train on CPU processes, or install the CUDA build of PyTorch.")
        env["ACCELERATE_USE_CPU"] = "true"  # CPU processes join through gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(main_process_port)]
    if num_processes > 1:
        cmd.append("--multi_gpu")  # torch.distributed.run; with ACCELERATE_USE_CPU it joins CPU processes
    if gpus:
        cmd += ["--gpu_ids", gpus]
    cmd += ["-m", "trainer.cli", "train", "--config", str(config_path)]
    for flag, value in (("--resume", resume_from), ("--workdir", workdir), ("--events", events_path),
                        ("--stop-file", stop_file)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd, env


def start_train(config_path: str | Path, num_processes: int, **options) -> subprocess.Popen:
    """Start the launcher and return at once (the job runner supervises it); options as in `launch_command`."""
    cmd, env = launch_command(config_path, num_processes, **options)
    return subprocess.Popen(cmd, env=env)


def launch_train(config_path: str | Path, num_processes: int, **options) -> int:
    """Run `train` on `num_processes` processes and wait; the exit code is 0 when every rank finished.

    SIGTERM to this process (`docker stop`, a job's Stop) is passed to the launcher, which passes it to every
    rank: each stops at its next step with a checkpoint.
    """
    proc = start_train(config_path, num_processes, **options)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate()) if on_main_thread else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def rank_share(global_batch: list[int], rank: int, world: int) -> list[int]:
    """This rank's examples of one global batch (every `world`-th, so no rank is ever left empty)."""
    return global_batch[rank::world]


def sample_generators(seed: int, micro_step: int, positions: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per example, keyed by its place in the global batch, not by the rank that trains it.

    So 2 processes × batch 1 draw exactly the noise and timesteps that 1 process × batch 2 draws, and no two
    ranks share noise (a single global seed would give every rank the same numbers).
    """
    return [torch.Generator().manual_seed(_mix(seed, micro_step, p)) for p in positions]


def _mix(*numbers: int) -> int:
    blob = hashlib.blake2b(":".join(map(str, numbers)).encode(), digest_size=8).digest()
    return int.from_bytes(blob, "little") >> 1


def agree_to_stop(accelerator, wants_stop: bool) -> bool:
    """Stop when any rank wants to (a stop file, SIGTERM): all ranks must leave the loop at the same step."""
    if accelerator.num_processes == 1:
        return wants_stop
    flag = torch.tensor([1.0 if wants_stop else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def lora_tensor_hash(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def write_rank_report(accelerator, state_dict: dict[str, torch.Tensor], losses: list[float]) -> None:
    """With LORA_STUDIO_RANK_REPORT_DIR set (tests, debugging), each rank records what it ended up holding."""
    folder = os.environ.get(RANK_REPORT_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    report = {"rank": accelerator.process_index, "world": accelerator.num_processes,
              "lora_hash": lora_tensor_hash(state_dict), "losses": losses, "num_threads": torch.get_num_threads()}
    (Path(folder) / f"rank-{accelerator.process_index}.json").write_text(json.dumps(report), encoding="utf-8")
