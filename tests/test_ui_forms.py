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
def test_presets_give_valid_configs_and_only_touch_their_fields(tmp_path, preset):
    updates = forms.preset_updates(preset)
    assert set(updates) == set(forms.PRESETS[preset])
    values = forms.config_to_values(TrainConfig()) | updates
    config = forms.values_to_config(values, tmp_path, dataset="example")
    for key, expected in forms.PRESETS[preset].items():
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == expected
    config_from_dict(config.to_dict())  # the saved form is a config the CLI reads back


def test_help_texts_come_from_the_config_docstrings():
    import gradio as gr

    with gr.Blocks():
        widgets = forms.build_fields(forms.ESSENTIALS + forms.ADVANCED)
    assert "LoRA rank" in widgets["network.rank"].info
    assert "moving average" in widgets["train.ema_decay"].info
    assert isinstance(widgets["train.gradient_checkpointing"], gr.Checkbox)
    assert isinstance(widgets["optim.lr_scheduler"], gr.Dropdown)
    assert widgets["train.steps"].value == TrainConfig().train.steps
