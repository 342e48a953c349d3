"""The Train form maps onto TrainConfig in one place: every field is real, values round-trip."""

from __future__ import annotations

import pytest

from app import forms
from app.security import SecurityError
from trainer.config import TrainConfig, config_from_dict
from trainer.errors import ConfigError


def test_every_form_field_is_a_config_field_once():
    keys = [f.key for f in forms.ALL_FIELDS]
    assert len(keys) == len(set(keys))
    assert set(keys) <= set(forms.dataclass_keys())
    for essential in (
        "model.base_model",
        "export.name",
        "train.steps",
        "network.rank",
        "optim.learning_rate",
        "data.resolution",
    ):
        assert essential in [f.key for f in forms.ESSENTIALS]


def test_widget_values_become_a_validated_config(tmp_path):
    values = forms.config_to_values(TrainConfig())
    values.update(
        {
            "train.steps": 12.0,
            "network.rank": 4.0,
            "data.resolution": "128",
            "sample.prompts": "a red cube\n\n a blue ball ",
            "optim.learning_rate": "0.001",
        }
    )
    config = forms.values_to_config(values, tmp_path, dataset="cats")
    assert config.train.steps == 12 and isinstance(config.train.steps, int)
    assert config.network.rank == 4
    assert config.data.resolution == 128
    assert config.optim.learning_rate == pytest.approx(1e-3)
    assert config.sample.prompts == ["a red cube", "a blue ball"]
    assert config.data.path == str((tmp_path / "datasets" / "cats").resolve())
    # what the form shows for a config is what it reads back
    again = forms.values_to_config(forms.config_to_values(config), tmp_path, dataset="cats")
    assert again.to_dict() == config.to_dict()


def test_bad_values_name_the_field(tmp_path):
    values = forms.config_to_values(TrainConfig())
    values.update({"train.steps": 0, "optim.learning_rate": "fast", "export.name": "../../evil"})
    with pytest.raises(ConfigError) as err:
        forms.values_to_config(values, tmp_path, dataset="cats")
    text = str(err.value)
    assert "train.steps must be >= 1" in text
    assert "optim.learning_rate must be a number" in text
    assert "export.name" in text


@pytest.mark.parametrize("name", ["../etc", "/etc", "a/b", "..", ".hidden", "", "x" * 65, "a b", "c:\\x"])
def test_dataset_names_that_escape_are_refused(tmp_path, name):
    with pytest.raises(SecurityError):
        forms.values_to_config({}, tmp_path, dataset=name)


@pytest.mark.parametrize("preset", list(forms.PRESETS))
def test_presets_give_valid_configs_and_set_every_field_but_the_users(tmp_path, preset):
    updates = forms.preset_updates(preset)
    assert set(updates) == {f.key for f in forms.ALL_FIELDS} - forms.USER_FIELDS
    assert forms.USER_FIELDS.issubset(f.key for f in forms.ALL_FIELDS)
    assert not set(forms.PRESETS[preset]) & forms.USER_FIELDS
    values = forms.config_to_values(TrainConfig()) | updates
    config = forms.values_to_config(values, tmp_path, dataset="example")
    for key, expected in forms.PRESETS[preset].items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == expected
    config_from_dict(config.to_dict())  # the saved form is a config the CLI reads back
    assert forms.preset_help(preset).startswith(preset + ":")


def test_switching_presets_leaves_nothing_of_the_previous_one(tmp_path):
    values = forms.config_to_values(TrainConfig())
    values.update({"export.name": "mine", "data.trigger_word": "sks", "sample.prompts": "a sks cat"})
    values |= forms.preset_updates("Style")
    assert values["train.min_snr_gamma"] == 5.0 and values["train.validate_every"] == 100
    values |= forms.preset_updates("Quick test")
    config = forms.values_to_config(values, tmp_path, dataset="example")
    assert config.train.min_snr_gamma == TrainConfig().train.min_snr_gamma
    assert config.train.validate_every == TrainConfig().train.validate_every
    assert config.data.validation_fraction == TrainConfig().data.validation_fraction
    assert config.optim.warmup_steps == TrainConfig().optim.warmup_steps
    assert config.train.steps == 30
    # the user's own fields stay as typed
    assert (config.export.name, config.data.trigger_word, config.sample.prompts) == ("mine", "sks", ["a sks cat"])
    assert forms.preset_updates(None) == {}
    assert "preset" in forms.preset_help(None).lower()


def test_a_pick_writes_only_what_differs_from_what_its_event_saw():
    import pandas as pd

    from app.datasets_tab import _rows

    unchanged = forms.unless_shown("sks", "sks")
    assert isinstance(unchanged, dict) and "value" not in unchanged  # an update that leaves the field alone
    assert forms.unless_shown("sks", "") == "sks"
    rows = [["00.png", "a red circle"], ["01.png", "a blue square"]]
    seen = pd.DataFrame(rows, columns=["file", "caption"])  # as the browser sends the captions table
    assert "value" not in forms.unless_shown(rows, _rows(seen))
    edited = pd.DataFrame([rows[0], ["01.png", "an edited caption"]], columns=["file", "caption"])
    assert forms.unless_shown(rows, _rows(edited)) == rows


@pytest.mark.parametrize(
    ("current", "expected"),
    [("", "cats"), ("lora", "cats"), (" ", "cats"), ("dogs", "cats"), ("my-style", None), ("cats", None)],
)
def test_the_lora_name_defaults_from_the_dataset_unless_typed(current, expected):
    assert forms.default_lora_name("cats", current, ("cats", "dogs")) == expected
    assert forms.default_lora_name(None, "", ("cats",)) is None


def test_skip_bad_images_is_a_checkbox(tmp_path):
    import gradio as gr

    with gr.Blocks():
        widgets = forms.build_fields(forms.ADVANCED)
    assert isinstance(widgets["data.skip_bad_images"], gr.Checkbox)
    values = forms.config_to_values(TrainConfig()) | {"data.skip_bad_images": True}
    assert forms.values_to_config(values, tmp_path, dataset="cats").data.skip_bad_images is True


def test_help_texts_come_from_the_config_docstrings():
    import gradio as gr

    with gr.Blocks():
        widgets = forms.build_fields(forms.ESSENTIALS + forms.ADVANCED)
    assert "LoRA rank" in widgets["network.rank"].info
    assert "moving average" in widgets["train.ema_decay"].info
    assert isinstance(widgets["train.gradient_checkpointing"], gr.Checkbox)
    assert isinstance(widgets["optim.lr_scheduler"], gr.Dropdown)
    assert widgets["train.steps"].value == TrainConfig().train.steps
