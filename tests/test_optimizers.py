"""The optimizers of `optim.optimizer`: each CPU one trains the tiny model and resumes exactly; the rest refuse.

One run per CPU optimizer besides AdamW (whose resume tests/test_train.py checks) is shared: 4 steps with a
checkpoint at step 2, and a second run resumed from that checkpoint that must end with the same LoRA weights
and losses.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import load_config
from trainer.errors import ConfigError
from trainer.loop import train
from trainer.optimizers import make_optimizer, state_bytes

CPU_OPTIMIZERS = {"adamw": {"optim.learning_rate": 1e-3},
                  "prodigy": {"optim.learning_rate": 1.0},
                  "schedulefree": {"optim.learning_rate": 1e-3, "optim.warmup_steps": 1},
                  "adafactor": {"optim.learning_rate": 1e-3}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, two_images):
    """Per optimizer: (the uninterrupted run, the run resumed from its step-2 checkpoint, its folder)."""
    found = {}
    for name, settings in CPU_OPTIMIZERS.items():
        if name == "adamw":
            continue
        folder = tmp_path_factory.mktemp(name)

        def config(out, settings=settings, name=name):
            return load_config(None, {"data.path": str(two_images), "data.resolution": 64, "train.steps": 4,
                                      "train.save_every": 2, "export.dtype": "float32",
                                      "export.output_dir": str(out), "optim.optimizer": name, **settings})

        full = train(config(folder / "full"))
        resumed = train(config(folder / "resumed"), resume_from=folder / "full", workdir=folder / "resumed")
        found[name] = (full, resumed, folder)
    return found


@pytest.mark.parametrize("name", ["prodigy", "schedulefree", "adafactor"])
def test_each_cpu_optimizer_trains_and_resumes_exactly(runs, name):
    full, resumed, _ = runs[name]
    weights, again = load_file(str(full.outputs[1])), load_file(str(resumed.outputs[1]))
    ups = [v for k, v in weights.items() if "lora_B" in k]
    assert ups and all(v.abs().max() > 0 for v in ups)  # LoRA B starts at zero: every one was trained
    assert all(math.isfinite(x) for x in full.losses) and len(full.losses) == 4
    for key in weights:
        torch.testing.assert_close(weights[key], again[key], atol=0, rtol=0)
    assert resumed.losses == full.losses[2:]


def test_the_optimizers_differ_and_their_state_is_in_the_checkpoint(runs):
    finals = {name: load_file(str(full.outputs[1])) for name, (full, _, _) in runs.items()}
    key = next(k for k in finals["prodigy"] if "lora_B" in k)
    names = list(finals)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.equal(finals[a][key], finals[b][key]), (a, b)
    groups = {name: torch.load(folder / "full" / "checkpoints" / "step-2" / "optimizer.bin",
                               weights_only=True)["param_groups"][0] for name, (_, _, folder) in runs.items()}
    # Prodigy's step-size estimate (it grows over hundreds of steps) and schedule-free's average, after 2 steps
    assert groups["prodigy"]["k"] == 2 and groups["prodigy"]["d_numerator"] > 0 and groups["prodigy"]["d_coef"] == 1
    assert groups["schedulefree"]["k"] == 2 and groups["schedulefree"]["weight_sum"] > 0
    assert groups["schedulefree"]["train_mode"] is False  # saved at its averaged weights
    assert groups["adafactor"]["relative_step"] is False and groups["adafactor"]["lr"] == 1e-3


def test_state_bytes_are_what_each_optimizer_allocates():
    torch.manual_seed(0)
    shapes = [((8, 320), False), ((320, 8), True), ((4, 8, 3, 3), False), ((640,), False)]
    for name in CPU_OPTIMIZERS:
        params = [torch.nn.Parameter(torch.zeros(s) if zero else torch.randn(s)) for s, zero in shapes]
        config = load_config(None, {"optim.optimizer": name, **CPU_OPTIMIZERS[name]})
        optimizer = make_optimizer(name, [{"params": params, "lr": config.optim.learning_rate}], config)
        if hasattr(optimizer, "train"):
            optimizer.train()
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
        allocated = sum(v.nbytes for s in optimizer.state.values() for k, v in s.items()
                        if isinstance(v, torch.Tensor) and k != "step")
        assert allocated == state_bytes(name, shapes), name
    # bitsandbytes (CUDA only): 8 bytes a value below 4096 values, else 2 bytes and a float32 scale per 256 each
    assert state_bytes("adamw8bit", [((8, 320), False)]) == 8 * 2560
    assert state_bytes("adamw8bit", [((8, 640), False)]) == 2 * 5120 + 2 * 4 * 20
    assert state_bytes("adafactor", [((8, 640), False)]) == 4 * (8 + 640) + 4


def test_the_config_refuses_settings_an_optimizer_cannot_use():
    cases = {
        "optim.learning_rate = 0.0001 with optim.optimizer = 'prodigy'": {"optim.optimizer": "prodigy"},
        "set optim.text_encoder_lr = 0": {"optim.optimizer": "prodigy", "optim.learning_rate": 1.0,
                                          "optim.text_encoder_lr": 0.5},
        "set optim.lr_scheduler = 'constant'": {"optim.optimizer": "schedulefree", "optim.lr_scheduler": "cosine"},
        "optim.optimizer must be one of adamw, adamw8bit": {"optim.optimizer": "lion"},
        "optim.d_coef must be > 0": {"optim.optimizer": "prodigy", "optim.learning_rate": 1.0,
                                     "optim.d_coef": 0.0},
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config(None, overrides)
    assert load_config(None, {"optim.optimizer": "prodigy", "optim.learning_rate": 1.0}).optim.d_coef == 1.0
    assert load_config(None, {"optim.optimizer": "adamw8bit"}).optim.optimizer == "adamw8bit"  # valid as a file


def test_adamw8bit_is_refused_on_a_cpu_before_the_data_or_model_is_read(quick_config, tmp_path):
    events = []
    # The dataset does not exist: the optimizer is refused before the data is read (and the model loaded).
    config = quick_config(**{"optim.optimizer": "adamw8bit", "data.path": str(tmp_path / "no-such-folder")})
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU and `pip install bitsandbytes` \(this run has no CUDA"):
        train(config, on_event=events.append)
    assert [e.kind for e in events] == ["failed"] and "choose 'adamw'" in events[0].error
