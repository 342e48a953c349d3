"""Out of memory mid-run in a real job process: the failure names the settings that fit, a resume applies them.

On a CPU there is no GPU to fill, so the runner processes get two things a GPU box would have (README, "Out of
memory"): `LORA_STUDIO_GPU_MEMORY`, the memory the run must fit (here between the estimates with and without
gradient checkpointing), and a `sitecustomize` on their PYTHONPATH whose forward pre-hook raises CUDA's
OutOfMemoryError at the UNet's third training forward (step 3) while gradient checkpointing is off.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.errors import ConfigError, JobError
from trainer.jobs import Supervisor

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 240

INJECT = '''
import os
if os.environ.get("LORA_STUDIO_TEST_OOM_AT"):
    import torch

    _calls = []

    def _out_of_memory(module, args):
        if (type(module).__name__ == "UNet2DConditionModel" and module.training
                and not module.is_gradient_checkpointing):
            _calls.append(1)
            if len(_calls) == int(os.environ["LORA_STUDIO_TEST_OOM_AT"]):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    torch.nn.modules.module.register_module_forward_pre_hook(_out_of_memory)
'''


def job_config(**overrides):
    values = {"data.path": str(ROOT / "datasets" / "example"), "data.resolution": 64, "network.rank": 4,
              "train.steps": 6, "train.save_every": 2, "export.name": "oom", "export.dtype": "float32",
              "sample.every_n_steps": 0, "train.log_with": "none"}
    return load_config(None, {**values, **overrides})


def complete_checkpoints(job_dir: Path) -> list[str]:
    root = job_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if (p / "COMPLETE").is_file()) if root.is_dir() else []


@pytest.fixture(scope="module")
def oom_env(tmp_path_factory):
    """Runner processes that run out of memory at step 3 without gradient checkpointing, on a 'GPU' it fits."""
    from trainer.estimate import estimate_step

    inject = tmp_path_factory.mktemp("inject")
    (inject / "sitecustomize.py").write_text(INJECT)
    plain = estimate_step(job_config()).peak_bytes
    checkpointed = estimate_step(job_config(**{"train.gradient_checkpointing": True})).peak_bytes
    assert checkpointed < plain
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv("PYTHONPATH", os.pathsep.join([str(inject), str(ROOT)]))
        patch.setenv("LORA_STUDIO_TEST_OOM_AT", "3")
        patch.setenv("LORA_STUDIO_GPU_MEMORY", f"{(plain + checkpointed) // 2}B")
        yield {"budget": (plain + checkpointed) // 2, "plain": plain, "fitted": checkpointed}


@pytest.fixture(scope="module")
def failed_jobs(oom_env, tmp_path_factory):
    """Two jobs (one for the CLI, one for the UI) that ran out of memory at step 3, with checkpoints at step 2."""
    sup = Supervisor(tmp_path_factory.mktemp("oom") / "home", max_concurrent=2)
    ids = [sup.submit(job_config(**{"export.name": name})) for name in ("oom", "oom-ui")]
    return sup, [(job_id, sup.wait(job_id, timeout=WAIT_S)) for job_id in ids]


@pytest.mark.timeout(WAIT_S * 2)
def test_out_of_memory_job_names_the_fit_and_resumes_with_it(failed_jobs, oom_env):
    from trainer import checkpoint as ckpt
    from trainer.cli import main

    sup, [(job_id, job), _] = failed_jobs
    folder = Path(job["dir"])
    assert job["status"] == "failed", sup.log_tail(job_id)
    assert "ran out of gpu memory" in job["error"].lower()
    assert job["suggested"] == {"train.gradient_checkpointing": True}
    assert "train.gradient_checkpointing = true" in job["advice"] and "--with-suggested" in job["advice"]
    failed = [e for e in sup.events(job_id) if e["kind"] == "failed"][-1]
    assert failed["memory"] == {"budget": oom_env["budget"], "peak_bytes": oom_env["plain"],
                                "fitted_bytes": oom_env["fitted"]}
    # The checkpoint before the failure is complete and loadable as it is.
    assert complete_checkpoints(folder) == ["step-2"]
    assert ckpt.check_resumable(folder / "checkpoints" / "step-2", load_config(folder / "config.toml")).step == 2

    started = time.monotonic()
    assert main(["jobs", "resume", job_id, "--with-suggested", "--wait", "--json", "--home", str(sup.home.root)]) == 0
    done = sup.show(job_id)
    assert done["status"] == "done" and done["step"] == 6, sup.log_tail(job_id)
    assert load_config(folder / "config.toml").train.gradient_checkpointing is True
    events = sup.events(job_id)
    queued = [e for e in events if e["kind"] == "queued" and e.get("resume")][-1]
    assert queued["changed"] == {"train.gradient_checkpointing": [False, True]}
    runner = [e for e in events if e["kind"] == "runner"][-1]
    assert runner["resume_from"].endswith("step-2")
    assert [e for e in events if e["kind"] == "started"][-1]["start_step"] == 2
    lora = folder / "output" / "oom.safetensors"
    assert str(lora) in done["outputs"] and lora.stat().st_size > 0 and done["library"]
    assert json.loads((folder / "checkpoints" / "accepted_changes.json").read_text()) == {
        "train.gradient_checkpointing": True}
    print(f"resume to done: {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(WAIT_S * 2)
def test_train_tab_offers_resume_with_these_settings_over_the_api(failed_jobs):
    from gradio_client import Client
    from uiserver import running_server

    sup, [_, (job_id, job)] = failed_jobs
    assert job["status"] == "failed" and job["suggested"] == {"train.gradient_checkpointing": True}
    with running_server(sup.home.root) as server:
        client = Client(server.url, verbose=False)
        # VIEW: …, details, resume_fit, fit_note; the API leaves buttons out, so the note is the last output
        note = client.predict(job_id, api_name="/show_job")[-1]  # a visibility change comes as an update
        assert note["visible"] and "`train.gradient_checkpointing = true`" in note["value"], note
        assert "last checkpoint" in note["value"]
        result = client.predict(job_id, api_name="/resume_with_suggested")
        assert f"Resumed job **{job_id}** with `train.gradient_checkpointing = true`" in result[0], result[0]
        assert result[8]["status"] in ("queued", "running")
        assert result[-1]["visible"] is False  # the note (and its button) go once the job is queued
        done = sup.wait(job_id, timeout=WAIT_S)
        assert done["status"] == "done", sup.log_tail(job_id)
        assert load_config(Path(done["dir"]) / "config.toml").train.gradient_checkpointing is True
        assert (Path(done["dir"]) / "output" / "oom-ui.safetensors").is_file()
        again = client.predict(job_id, api_name="/resume_with_suggested")  # done: nothing suggested any more
        assert "Could not resume" in again[0] and "no suggested settings" in again[0]


def test_resume_refuses_settings_that_are_not_about_memory(tmp_path):
    from trainer.cli import main

    sup = Supervisor(tmp_path / "home", max_concurrent=0)  # nothing starts: the job stays queued, then stopped
    job_id = sup.submit(job_config())
    sup.stop(job_id)
    config = sup.files(job_id).config
    before = config.read_bytes()
    with pytest.raises(JobError, match=r"optim\.learning_rate changed: only memory settings.*submit a new job"):
        sup.resume(job_id, settings={"optim.learning_rate": 1e-3})
    with pytest.raises(JobError, match="optimizer's state"):
        sup.resume(job_id, settings={"optim.optimizer": "adamw8bit", "train.batch_size": 1})
    with pytest.raises(ConfigError, match=r"train\.batch_size must be >= 1"):
        sup.resume(job_id, settings={"train.batch_size": 0})
    assert config.read_bytes() == before and sup.show(job_id)["status"] == "stopped"
    assert not (sup.files(job_id).checkpoints / "accepted_changes.json").exists()
    # A job that did not run out of memory has nothing to resume with.
    assert main(["jobs", "resume", job_id, "--with-suggested", "--home", str(sup.home.root)]) == 2
    assert sup.show(job_id)["status"] == "stopped"


def test_checkpoints_accept_only_the_recorded_memory_values(tmp_path):
    from trainer import checkpoint as ckpt

    saved = job_config().to_dict()
    changed = job_config(**{"train.batch_size": 2, "data.resolution": 128}).to_dict()
    assert len(ckpt.resume_breaking_changes(saved, changed)) == 2
    ckpt.accept_changes(tmp_path, {"train.batch_size": 2})
    accepted = ckpt.accepted_changes(ckpt.checkpoints_dir(tmp_path))
    assert ckpt.resume_breaking_changes(saved, changed, accepted) == ["data.resolution: 64 -> 128"]
    ckpt.accept_changes(tmp_path, {"data.resolution": 96})  # merged; another value than the config's
    accepted = ckpt.accepted_changes(ckpt.checkpoints_dir(tmp_path))
    assert accepted == {"train.batch_size": 2, "data.resolution": 96}
    assert ckpt.resume_breaking_changes(saved, changed, accepted) == ["data.resolution: 64 -> 128"]
    with pytest.raises(Exception, match="optim.optimizer"):
        ckpt.accept_changes(tmp_path, {"optim.optimizer": "adamw8bit"})
