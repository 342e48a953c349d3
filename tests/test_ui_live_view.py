"""The Train tab's live view of real jobs: runner processes train tiny LoRAs through the supervisor, and the
view functions read what they wrote (samples over steps, the loss and learning-rate plots, which commands
apply, and what the downloads are)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from app.studio import Studio
from app.train_tab import VIEW, job_view, refresh
from app.train_view import LOSS_SERIES, loss_frame, lr_frame, sample_gallery
from trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red square", "a blue ball"]
WAIT_S = 300


def job_config(name: str, **overrides):
    values = {"data.path": str(ROOT / "datasets" / "example"), "data.resolution": 64, "network.rank": 4,
              "export.name": name, "export.dtype": "float32", "train.log_with": "none", "sample.every_n_steps": 0}
    return load_config(None, {**values, **overrides})


def view_of(studio: Studio, job_id: str) -> dict:
    """What a refresh sends to each component of VIEW, by name."""
    return dict(zip(VIEW, refresh(studio, job_id), strict=True))


def wait_step(studio: Studio, job_id: str, step: int) -> dict:
    deadline = time.monotonic() + WAIT_S
    while (job := studio.supervisor.show(job_id))["status"] != "running" or (job["step"] or 0) < step:
        assert job["status"] in ("queued", "running"), studio.supervisor.log_tail(job_id)
        assert time.monotonic() < deadline, f"job {job_id} did not reach step {step}"
        time.sleep(0.2)
    return job


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """A finished job `cats` (samples of two prompts every 2 steps, validation), a second `cats` published as
    `cats-2`, and a long job stopped gracefully, resumed and force-stopped; with the view at each moment."""
    studio = Studio(tmp_path_factory.mktemp("live-view") / "home")
    sup = studio.supervisor
    cats = sup.submit(job_config("cats", **{"train.steps": 4, "sample.every_n_steps": 2, "sample.steps": 2,
                                            "sample.prompts": PROMPTS, "data.validation_fraction": 0.25,
                                            "train.validate_every": 2}))
    again = sup.submit(job_config("cats", **{"train.steps": 2}))
    for job_id in (cats, again):
        assert sup.wait(job_id, timeout=WAIT_S)["status"] == "done", sup.log_tail(job_id)

    long = sup.submit(job_config("long", **{"train.steps": 5000, "train.save_every": 3}))
    views = {"done": view_of(studio, cats)}
    wait_step(studio, long, 3)
    views["running"] = view_of(studio, long)
    sup.stop(long)
    views["stopping"] = view_of(studio, long)  # the flag is up; the run ends after its step, checkpoint, export
    assert views["stopping"]["details"]["status"] == "running", "the graceful stop ended before the view looked"
    assert sup.wait(long, timeout=WAIT_S)["status"] == "stopped"
    views["stopped"] = view_of(studio, long)
    stopped_at = sup.show(long)["step"]
    sup.resume(long)
    wait_step(studio, long, stopped_at + 4)
    sup.stop(long, force=True)
    views["forced"] = view_of(studio, long)
    return studio, {"cats": cats, "again": again, "long": long}, views


def test_the_gallery_shows_every_sample_step_in_order_captioned_with_step_and_prompt(jobs, monkeypatch):
    import app.train_view

    studio, ids, _ = jobs
    view = job_view(studio, ids["cats"])
    folder = Path(view["job"]["dir"])
    expected = [(str(folder / "samples" / f"step-{step}" / f"0{i}.png"), f"step {step} · {prompt}")
                for step in (2, 4) for i, prompt in enumerate(PROMPTS)]
    assert view["samples"] == expected
    assert all(Path(path).is_file() for path, _ in view["samples"])
    assert view["sample_columns"] == 4, "two prompts a step: two whole steps a row, one prompt a column"

    # a run from before sample events named their prompts: the config's, else numbered
    events = [{**e, "prompts": []} for e in studio.supervisor.events(ids["cats"])]
    assert sample_gallery(events, folder)[0] == expected
    assert [caption for _, caption in sample_gallery(events, folder / "no-such-job")[0]][:2] == [
        "step 2 · prompt 1", "step 2 · prompt 2"]
    monkeypatch.setattr(app.train_view, "SAMPLE_STEPS", 1)  # the cap keeps the newest steps
    assert sample_gallery(events, folder)[0] == expected[2:]


def test_the_loss_plot_draws_the_raw_loss_its_moving_average_and_validation(jobs):
    studio, ids, views = jobs
    events = studio.supervisor.events(ids["cats"])
    progress = [e for e in events if e["kind"] == "progress"]
    frame = views["done"]["loss"]
    assert sorted(set(frame["series"])) == ["training (raw)", "training (smoothed)", "validation"]
    raw = frame[frame["series"] == "training (raw)"]
    assert list(raw["step"]) == [1, 2, 3, 4] and list(raw["loss"]) == [e["loss"] for e in progress]
    # TensorBoard's smoothing, written out: a debiased exponential moving average with weight 0.9
    last, expected = 0.0, []
    for count, event in enumerate(progress, start=1):
        last = 0.9 * last + 0.1 * event["loss"]
        expected.append(last / (1 - 0.9 ** count))
    smoothed = frame[frame["series"] == "training (smoothed)"]
    assert list(smoothed["step"]) == [1, 2, 3, 4]
    assert list(smoothed["loss"]) == pytest.approx(expected, rel=1e-12)
    assert list(frame[frame["series"] == "validation"]["step"]) == [2, 4]
    # a step trained again after a resume replaces the first try, so the line does not fold back
    again = loss_frame([*events, {**progress[1], "loss": 9.0}])
    assert list(again[again["series"] == "training (raw)"]["loss"])[1] == 9.0 and len(again) == len(frame)

    lr = views["done"]["lr"]
    assert list(lr.columns) == ["step", "lr"] and list(lr["step"]) == [1, 2, 3, 4]
    assert list(lr["lr"]) == [e["lr"] for e in progress] and all(value > 0 for value in lr["lr"])
    assert lr_frame([]).empty
    empty = loss_frame([])  # a queued job: each series there from the start (the plot's colours), none drawn
    assert list(empty["series"]) == list(LOSS_SERIES) and empty["loss"].isna().all() and empty["step"].isna().all()


def interactive(view: dict) -> dict[str, bool]:
    return {name: view[name]["interactive"] for name in ("stop", "force", "resume")}


def test_stop_force_stop_and_resume_are_enabled_only_when_they_apply(jobs):
    _, _, views = jobs
    assert interactive(views["running"]) == {"stop": True, "force": True, "resume": False}
    assert interactive(views["stopping"]) == {"stop": False, "force": True, "resume": False}  # Stop once
    assert interactive(views["stopped"]) == {"stop": False, "force": False, "resume": True}
    assert interactive(views["forced"]) == {"stop": False, "force": False, "resume": True}
    assert interactive(views["done"]) == {"stop": False, "force": False, "resume": False}
    assert views["done"]["samples"]["columns"] == 4  # the gallery's columns follow the job too


def test_the_downloads_note_names_the_step_and_the_library_name(jobs):
    studio, ids, views = jobs
    assert views["done"]["downloads_note"] == "Files from step 4 of 4.\n\nPublished to the library as **cats**."
    second = job_view(studio, ids["again"])
    assert second["job"]["library_name"] == "cats-2"
    assert second["downloads_note"] == ("Files from step 2 of 2.\n\n"
                                        "Published to the library as **cats-2** (the name cats was taken).")
    assert (studio.home / "loras" / "cats-2.safetensors").is_file()


def test_the_downloads_note_of_a_force_stopped_job_says_how_far_it_got(jobs):
    from safetensors import safe_open

    studio, ids, views = jobs
    stopped, forced = views["stopped"], views["forced"]
    stopped_at = stopped["details"]["step"]
    assert stopped["downloads_note"] == f"Files from step {stopped_at} of 5000."
    # after the force stop the files are still the graceful stop's; the run went further than them
    reached = forced["details"]["step"]
    folder = Path(forced["details"]["dir"])
    lora = folder / "output" / "long.safetensors"
    assert str(lora) in forced["downloads"] and reached >= stopped_at + 4
    with safe_open(lora, "pt") as handle:
        assert handle.metadata()["ss_steps"] == str(stopped_at)
    saved = max(int(p.parent.name.removeprefix("step-")) for p in (folder / "checkpoints").glob("step-*/COMPLETE"))
    clause = ("its last checkpoint keeps that progress: Resume continues from it" if saved >= reached
              else f"its last checkpoint is from step {saved}: Resume continues from there")
    assert forced["downloads_note"] == (f"Files from step {stopped_at}; the run reached step {reached} before it "
                                        f"was force-stopped ({clause}).")
    assert not forced["details"]["library"], "a stopped job is not published"

    # what the note says Resume does is what it does (its last test: the job is resumed and killed again)
    sup = studio.supervisor
    sup.resume(ids["long"])
    deadline = time.monotonic() + WAIT_S
    while not (runs := [e for e in sup.events(ids["long"]) if e["kind"] == "started"][2:]):
        assert time.monotonic() < deadline and sup.show(ids["long"])["status"] in ("queued", "running")
        time.sleep(0.2)
    sup.stop(ids["long"], force=True)
    assert runs[0]["start_step"] == saved
