"""EMA of the LoRA weights on the tiny model: the exported LoRA is the average (checked against one computed here
from the raw weights of every step), the best LoRA and the validation loss use it, and a stopped-and-resumed run
ends with the same LoRA as an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.ema import EMA_FILE
from trainer.errors import ConfigError, TrainingError
from trainer.export import read_lora_metadata
from trainer.loop import train
from trainer.precision import pin_threads

DECAY = 0.2  # below the ramp n/(n+9) from step 3 on: the schedule's ramp and its cap are both checked
STEPS = 4
SETTINGS = {"data.resolution": 64, "train.steps": STEPS, "optim.learning_rate": 1e-3, "export.dtype": "float32",
            "network.train_text_encoder": True, "network.rank": 4, "network.alpha": 4.0,
            "train.gradient_accumulation_steps": 2, "data.validation_fraction": 0.5, "train.validate_every": 2,
            "train.save_every": 1, "train.keep_last": STEPS, "train.log_with": "none", "train.num_threads": 1,
            "sample.every_n_steps": STEPS, "sample.steps": 2}


def run(data, out, should_stop=None, resume=False, **overrides):
    config = load_config(None, {**SETTINGS, "data.path": str(data), "export.output_dir": str(out), **overrides})
    events = []
    threads = torch.get_num_threads()
    pin_threads(config.train.num_threads)  # as the CLI and the runner do: a resumed run computes like the first
    try:
        result = train(config, on_event=events.append, should_stop=should_stop, resume_from=out if resume else None)
    finally:
        torch.set_num_threads(threads)
    return result, [(e.step, e.loss) for e in events if e.kind == "validation"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, two_images):
    """The same run without EMA (its checkpoints hold the raw LoRA of every step), with EMA, and with EMA stopped
    after step 2 (the EMA copy on the CPU) and resumed to the end (on the training device)."""
    root = tmp_path_factory.mktemp("ema")
    raw = run(two_images, root / "raw")
    ema = run(two_images, root / "ema", **{"train.ema_decay": DECAY})
    calls = []
    run(two_images, root / "resumed", should_stop=lambda: len(calls) >= 1 or calls.append(1),
        **{"train.ema_decay": DECAY, "train.ema_on_cpu": True})
    resumed = run(two_images, root / "resumed", resume=True, **{"train.ema_decay": DECAY})
    return root, raw, ema, resumed


def raw_weights(root) -> list[dict[str, torch.Tensor]]:
    """The raw LoRA after each step 1..STEPS: the checkpoints' files, then the final export."""
    steps = []
    for step in range(1, STEPS):
        folder = root / "raw" / "checkpoints" / f"step-{step}"
        steps.append({**load_file(str(folder / "lora_0.safetensors")), **load_file(str(folder / "lora_1.safetensors"))})
    return steps + [load_file(str(root / "raw" / "lora.peft.safetensors"))]


def expected_ema(weights: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The average after each step, in float64: update n decays by 0 at n = 1, then by min(DECAY, n / (n + 9))."""
    averages, average = [], None
    for n, w in enumerate(weights, start=1):
        decay = 0.0 if n == 1 else min(DECAY, n / (n + 9))
        average = {k: v.double() if average is None else decay * average[k] + (1 - decay) * v.double()
                   for k, v in w.items()}
        averages.append(average)
    return averages


def assert_equal_to(expected: dict[str, torch.Tensor], got) -> None:
    """`got` (a file or its tensors) equals `expected` within 1e-7."""
    got = got if isinstance(got, dict) else load_file(str(got))
    assert got.keys() == expected.keys()
    worst = max((got[k].double() - expected[k]).abs().max().item() for k in got)
    assert worst < 1e-7, f"differs from the independently computed EMA by {worst}"


def test_the_exported_lora_is_the_ema_not_the_raw_weights(runs):
    root, _, ema, _ = runs
    weights = raw_weights(root)
    averages = expected_ema(weights)
    peft = root / "ema" / "lora.peft.safetensors"
    assert_equal_to(averages[-1], peft)
    exported = load_file(str(peft))
    trained_b = [k for k in exported if "lora_B" in k]
    assert {k.split(".")[0] for k in trained_b} == {"unet", "text_encoder"}
    for component in ("unet", "text_encoder"):
        moved = max((exported[k] - weights[-1][k]).abs().max().item() for k in trained_b if k.startswith(component))
        assert moved > 1e-6, f"the {component} EMA is the raw LoRA"
    # The kohya file carries the same (EMA) tensors under its own names; the raw run's kohya file others.
    kohya = load_file(str(root / "ema" / "lora.safetensors"))
    raw_kohya = load_file(str(root / "raw" / "lora.safetensors"))
    peft_values = list(exported.values())
    for key, value in kohya.items():
        if key.endswith("weight"):
            assert any(torch.equal(value, v) for v in peft_values), f"{key} is not an EMA tensor"
            if "lora_up" in key:
                assert not torch.equal(value, raw_kohya[key])
    for name in ("lora.safetensors", "lora.peft.safetensors"):
        assert read_lora_metadata(root / "ema" / name)["lora_studio_ema_decay"] == repr(DECAY)
        assert "lora_studio_ema_decay" not in read_lora_metadata(root / "raw" / name)
    assert ema[0].step == STEPS


def test_checkpoints_hold_the_raw_lora_and_the_ema_of_that_step(runs):
    """Swapping the average in for validation and back leaves training untouched (the raw LoRA of each step is
    the no-EMA run's), and each checkpoint's ema.safetensors is the average at its step."""
    root, *_ = runs
    averages = expected_ema(raw_weights(root))
    for step in range(1, STEPS):
        for name in ("lora_0.safetensors", "lora_1.safetensors"):
            raw = load_file(str(root / "raw" / "checkpoints" / f"step-{step}" / name))
            with_ema = load_file(str(root / "ema" / "checkpoints" / f"step-{step}" / name))
            assert all(torch.equal(raw[k], with_ema[k]) for k in raw), f"EMA changed the training at step {step}"
        saved = load_file(str(root / "ema" / "checkpoints" / f"step-{step}" / EMA_FILE))
        # named by parameter (`unet.….lora_A.default.weight`); the PEFT files drop the adapter name
        assert_equal_to(averages[step - 1], {k.replace(".default.", "."): v for k, v in saved.items()})


def test_validation_and_the_best_lora_use_the_ema(runs):
    root, raw, ema, _ = runs
    (_, raw_checks), (result, ema_checks) = raw, ema
    assert [s for s, _ in raw_checks] == [s for s, _ in ema_checks] == [2, 4]
    assert all(a != b for (_, a), (_, b) in zip(raw_checks, ema_checks, strict=True)), "validation scored raw weights"
    best = result.best_step
    assert best in (2, 4)
    assert read_lora_metadata(root / "ema" / "lora.best.peft.safetensors")["ss_best_step"] == str(best)
    assert_equal_to(expected_ema(raw_weights(root))[best - 1], root / "ema" / "lora.best.peft.safetensors")


def test_samples_are_drawn_with_the_ema(runs):
    """The two runs train the same raw LoRA (see above), so their samples differ only by the weights drawn with."""
    root, *_ = runs
    raw, ema = (np.asarray(Image.open(root / run / "samples" / f"step-{STEPS}" / "00.png"), dtype=np.int16)
                for run in ("raw", "ema"))
    assert np.abs(raw - ema).max() > 0, "the sample was drawn with the raw weights"


def test_a_stopped_and_resumed_run_exports_the_same_ema(runs):
    root, _, (uninterrupted, ema_checks), (resumed, resumed_checks) = runs
    assert resumed.step == STEPS and (root / "resumed" / "checkpoints" / "step-1" / EMA_FILE).is_file()
    for name in ("lora.safetensors", "lora.peft.safetensors", "lora.best.peft.safetensors"):
        a, b = load_file(str(root / "ema" / name)), load_file(str(root / "resumed" / name))
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed {name} differs by {worst}"  # bit for bit
    assert resumed.losses == uninterrupted.losses[2:]
    assert resumed_checks == ema_checks[1:]  # step 2 was checked before the stop


def test_ema_cannot_be_switched_on_when_resuming(runs, two_images):
    root, *_ = runs
    with pytest.raises(TrainingError) as err:
        run(two_images, root / "raw", resume=True, **{"train.ema_decay": DECAY})
    assert "train.ema_decay: 0.0 -> 0.2" in str(err.value)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train.ema_decay": 1.0}, "train.ema_decay must be in 0..1, below 1"),
    ({"train.ema_decay": -0.5}, "train.ema_decay must be in 0..1"),
    ({"train.ema_on_cpu": True}, "train.ema_on_cpu places the EMA copy, but train.ema_decay is 0"),
])
def test_bad_ema_settings_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_the_cli_flags_set_the_ema_fields():
    from trainer.cli import build_parser
    from trainer.cli.train import overrides_from_args

    args = build_parser().parse_args(["train", "--ema-decay", "0.999", "--ema-on-cpu"])
    assert overrides_from_args(args) == {"train.ema_decay": 0.999, "train.ema_on_cpu": True}
