"""Distributed training on CPU (gloo): `lora-studio train --num-processes 2` against one process at the same
global batch; rank-0-only files; resuming under another world size; the launch command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from trainer import distributed
from trainer.config import config_from_dict, save_config
from trainer.errors import TrainingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMA = 0.5  # two_process_run trains with an EMA of the LoRA; its 1-process twin too


def _settings(example_dataset, out, **train):
    return {"data": {"path": str(example_dataset), "resolution": 64},
            "train": {"steps": 3, "batch_size": 1, "save_every": 2, "log_with": "tensorboard", **train},
            "export": {"output_dir": str(out), "dtype": "float32"}}


@pytest.fixture
def one_thread():
    """In-process training on one thread, like each launched rank (accelerate sets OMP_NUM_THREADS=1): two
    spinning OpenMP threads on a busy 2-core CI machine are many times slower, not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, example_dataset):
    """Real 2-process runs through the CLI: stopped at step 1 by a stop file, then resumed to the end, with an EMA of
    the LoRA (train.ema_decay) saved and resumed too. Every rank reports a hash of its (EMA) LoRA tensors."""
    root = tmp_path_factory.mktemp("dist")
    config_path = save_config(config_from_dict(_settings(example_dataset, root / "out", ema_decay=EMA)),
                              root / "run.toml")
    env = {**os.environ, "PYTHONPATH": ROOT, distributed.RANK_REPORT_ENV: str(root / "ranks")}
    cmd = [sys.executable, "-m", "trainer.cli", "train", "--config", str(config_path), "--num-processes", "2"]
    (root / "stop").touch()
    stopped = subprocess.run([*cmd, "--stop-file", str(root / "stop")], env=env, capture_output=True, text=True,
                             timeout=300)
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-6000:]
    assert "stopped; checkpoint written" in stopped.stdout + stopped.stderr
    assert (root / "out" / "checkpoints" / "step-1" / "COMPLETE").is_file()
    proc = subprocess.run([*cmd, "--resume", str(root / "out"), "--events", str(root / "events.jsonl")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root, proc


def test_two_processes_train_like_one_with_the_same_global_batch(two_process_run, example_dataset, tmp_path,
                                                                  one_thread):
    from trainer.loop import train

    root, _ = two_process_run
    reports = [json.loads((root / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["lora_hash"] == reports[1]["lora_hash"], "ranks hold different LoRA weights"
    assert reports[0]["losses"] == reports[1]["losses"]

    # The same global batch (2) on one process, uninterrupted: the same images, noise and timesteps.
    single = train(config_from_dict(_settings(example_dataset, tmp_path / "one", batch_size=2, ema_decay=EMA)))
    assert single.losses[1:] == pytest.approx(reports[0]["losses"], rel=1e-4, abs=1e-6)  # steps 2-3, resumed
    two = load_file(str(root / "out" / "lora.peft.safetensors"))
    one = load_file(str(tmp_path / "one" / "lora.peft.safetensors"))
    assert two.keys() == one.keys()
    assert any(v.abs().max() > 0 for k, v in two.items() if "lora_B" in k), "the LoRA did not train"
    worst = max((two[k] - one[k]).abs().max().item() for k in two)
    assert worst < 1e-5, f"2-process LoRA differs from the 1-process one by {worst}"


def _te_settings(example_dataset, out, base_model, **train):
    settings = _settings(example_dataset, out, steps=2, save_every=0, log_with="none", **train)
    settings["model"] = {"base_model": base_model}
    settings["network"] = {"train_text_encoder": True, "rank": 4, "alpha": 4.0}
    # The default learning rate: Adam turns float noise in near-zero gradients into steps of about the learning
    # rate, so 1 process and 2 (which sum the batch in another order) agree to about 1e-6 here, 1e-4 at 1e-2.
    settings["optim"] = {"text_encoder_lr": 1e-4}
    return settings


@pytest.mark.parametrize("base_model", ["tiny", "tiny-sdxl"])
def test_text_encoder_lora_on_two_processes_trains_one_lora_like_one_process(example_dataset, tmp_path, one_thread,
                                                                            base_model):
    """The text encoders go through their DDP wrappers too: their gradients are all-reduced, so both ranks
    hold one LoRA, the one 1 process at the same global batch trains (SDXL: two encoders, one of them with
    LoRA layers that get no gradient)."""
    from trainer.loop import train

    config_path = save_config(config_from_dict(_te_settings(example_dataset, tmp_path / "two", base_model)),
                              tmp_path / "run.toml")
    env = {**os.environ, "PYTHONPATH": ROOT, distributed.RANK_REPORT_ENV: str(tmp_path / "ranks")}
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "train", "--config", str(config_path),
                           "--num-processes", "2"], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    reports = [json.loads((tmp_path / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["lora_hash"] == reports[1]["lora_hash"], "ranks hold different LoRA weights"

    single = train(config_from_dict(_te_settings(example_dataset, tmp_path / "one", base_model, batch_size=2)))
    assert single.losses == pytest.approx(reports[0]["losses"], rel=1e-4, abs=1e-6)
    two = load_file(str(tmp_path / "two" / "lora.peft.safetensors"))
    one = load_file(str(tmp_path / "one" / "lora.peft.safetensors"))
    assert two.keys() == one.keys()
    encoders = ("text_encoder", "text_encoder_2") if base_model == "tiny-sdxl" else ("text_encoder",)
    for encoder in encoders:
        trained = [v for k, v in two.items() if k.startswith(f"{encoder}.") and "lora_B" in k]
        assert trained and any(v.abs().max() > 0 for v in trained), f"the {encoder} LoRA did not train"
    worst = max((two[k] - one[k]).abs().max().item() for k in two)
    assert worst < 1e-5, f"2-process LoRA differs from the 1-process one by {worst}"


def test_only_rank_zero_writes_files_and_events(two_process_run):
    root, proc = two_process_run
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.toml", "logs", "lora.peft.safetensors",
                                                     "lora.safetensors"]
    # Complete checkpoints (on stop, then every 2 steps), written by all ranks together (each rank's RNG state),
    # no temporary leftovers.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    files = {p.name for p in (out / "checkpoints" / "step-2").iterdir()}
    assert {"COMPLETE", "trainer_state.json", "lora_0.safetensors", "ema.safetensors", "random_states_0.pkl",
            "random_states_1.pkl"} <= files
    assert "num_processes = 2" in (out / "config.toml").read_text()

    events = [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events]
    assert kinds.count("started") == 1 and kinds.count("done") == 1 and kinds.count("progress") == 2
    started = events[kinds.index("started")]
    assert (started["num_processes"], started["start_step"]) == (2, 1)
    # TensorBoard event files, one per run (the stopped one and the resumed one), where the event says.
    log_dir = out / "logs" / "lora"
    assert started["log_dir"] == str(log_dir)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    assert str(out / "lora.safetensors") in proc.stdout


def test_resuming_under_another_world_size_is_refused_by_name(two_process_run, example_dataset, one_thread):
    from trainer.loop import train

    root, _ = two_process_run
    config = config_from_dict(_settings(example_dataset, root / "out", steps=4, ema_decay=EMA))
    with pytest.raises(TrainingError) as err:
        train(config, resume_from=root / "out")
    message = str(err.value) + (err.value.fix or "")
    assert "train.num_processes: 2 -> 1" in message
    assert "--num-processes" in message


def test_tensorboard_scalars_are_readable(two_process_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _ = two_process_run
    events = EventAccumulator(str(root / "out" / "logs" / "lora"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3]  # step 1 from the stopped run, 2-3 from the resumed one
    assert all(e.value > 0 for e in losses)


def test_a_config_asking_for_processes_is_not_trained_on_one(example_dataset, tmp_path):
    from trainer.loop import train

    config = config_from_dict(_settings(example_dataset, tmp_path, num_processes=2))
    with pytest.raises(TrainingError, match="not started by a launcher"):
        train(config)


def test_launch_command_is_an_argument_list_through_accelerate(tmp_path):
    cmd, env = distributed.launch_command(tmp_path / "run.toml", 2, resume_from=tmp_path, stop_file=tmp_path / "s")
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and "--multi_gpu" in cmd
    tail = cmd[cmd.index("-m", 3):]
    assert tail[:5] == ["-m", "trainer.cli", "train", "--config", str(tmp_path / "run.toml")]
    assert tail[tail.index("--resume") + 1] == str(tmp_path)
    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "true"
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            distributed.launch_command("run.toml", 1, gpus="0,1")


def test_per_example_noise_does_not_depend_on_the_rank_split():
    together = distributed.sample_generators(7, 3, range(4))
    split = [distributed.sample_generators(7, 3, range(r, 4, 2)) for r in (0, 1)]
    draws = [torch.randn(3, generator=g) for g in together]
    assert torch.equal(draws[1], torch.randn(3, generator=split[1][0]))
    assert torch.equal(draws[2], torch.randn(3, generator=split[0][1]))
    assert not torch.equal(draws[0], draws[1])


def test_documented_two_machine_commands_give_accelerate_a_two_node_world():
    """The README's 2-machine example, parsed by accelerate's own launcher (one machine cannot be two)."""
    import re
    import shlex

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read().replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines()
                if re.match(r"\s*accelerate launch .*--num_machines 2", line)]
    assert len(commands) == 2
    for rank, argv in enumerate(commands):
        assert argv[:2] == ["accelerate", "launch"]
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
        assert (args.num_machines, int(args.machine_rank), args.num_processes) == (2, rank, 8)
        assert args.multi_gpu and args.module and args.training_script == "trainer.cli"
        assert args.training_script_args[:3] == ["train", "--config", "run.toml"]
    prepare_multi_gpu_env(args)  # machine 1: the torch.distributed.run arguments it would start
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    assert args.rdzv_endpoint == "10.0.0.1:29500"


def test_logging_choices_name_the_field_and_the_fix(tmp_path, example_dataset):
    from accelerate.utils import is_wandb_available

    from trainer import tracking
    from trainer.errors import ConfigError

    def config(log_with):
        return config_from_dict(_settings(example_dataset, tmp_path, log_with=log_with))

    assert tracking.tracker_kwargs(config("none"), tmp_path) == {}
    assert tracking.tracker_kwargs(config("tensorboard"), tmp_path) == {"log_with": "tensorboard",
                                                                         "project_dir": str(tmp_path / "logs")}
    with pytest.raises(ConfigError, match="train.log_with must be auto, tensorboard, wandb or none"):
        config("mlflow")
    if not is_wandb_available():  # wandb is opt-in: asking for it without the package says how to get it
        with pytest.raises(ConfigError, match="pip install wandb"):
            tracking.tracker_kwargs(config("wandb"), tmp_path)
