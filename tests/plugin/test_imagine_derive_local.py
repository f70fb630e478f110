"""Upscale, zoom out, pan, remix, Params, /settings, Delete and the embedded engine's kept jobs,
through the local chat (tiny presets, CPU, small canvases)."""

from __future__ import annotations

import io

from PIL import Image

from bot.adapters.local import action_command
from bot.testing import TestBot
from tests.support.chat import final_of, say

SMALL = "steps: 4 size: 32 every: 2"


def test_zoom_pan_and_upscale_grow_the_canvas_and_name_their_parent(local):
    first = final_of(say(local, f"/imagine a lighthouse {SMALL} seed: 4"))
    job = first.data["job"]
    by_label = {a.label: a for a in first.actions}

    zoomed = final_of(say(local, action_command(by_label["Zoom out 1.5x"]) + " steps: 2"))
    assert zoomed.data["size"] == "48x48" and zoomed.data["parent"] == job and zoomed.data["seed"] == 4
    assert Image.open(io.BytesIO(zoomed.images[0].data)).size == (48, 48)
    assert f"zoom-out of job {job}" in local.buffer.getvalue()

    panned = final_of(say(local, action_command(by_label["Pan up"]) + " steps: 2"))
    assert panned.data["size"] == "32x48" and panned.data["parent"] == job

    # Remix: the same button's command with a new prompt (what the Discord and Slack forms send)
    remix = by_label["Remix"]
    assert remix.ask == ("prompt", "mode") and "[Remix: set prompt, mode] /imagine from_job:" in local.buffer.getvalue()
    upscaled = final_of(say(local, f"/imagine from_job: {job} mode: upscale prompt: a lighthouse at night steps: 2"))
    assert upscaled.data["size"] == "64x64" and upscaled.data["parent"] == job
    assert "a lighthouse at night" in upscaled.text
    assert Image.open(io.BytesIO(upscaled.images[0].data)).size == (64, 64)


def test_params_show_the_settings_and_the_chain_back_to_the_first_prompt(local):
    first = final_of(say(local, f"/imagine a red kite {SMALL} seed: 11"))
    second = final_of(say(local, f"/imagine from_job: {first.data['job']} mode: vary steps: 2"))
    third = final_of(say(local, f"/imagine = from_job: {second.data['job']} mode: zoom-out steps: 2"))
    params = next(a for a in third.actions if a.label == "Params")
    answer = final_of(say(local, action_command(params)))
    assert answer.ephemeral and answer.data["job"] == third.data["job"] and answer.data["mode"] == "zoom-out"
    assert answer.data["parent"] == second.data["job"] and answer.data["seed"] == third.data["seed"]
    assert answer.data["size"] == "48x48" and answer.data["drawer"] in ("vqgan", "pixels")
    chain = answer.data["lineage"]
    assert [a["job"] for a in chain] == [first.data["job"], second.data["job"]]
    assert [a["mode"] for a in chain] == ["", "vary"] and chain[0]["prompt"] == "a red kite" and chain[0]["seed"] == 11
    assert f"zoom-out of `{second.data['job']}`" in answer.text and f"vary of `{first.data['job']}`" in answer.text


def test_a_derived_canvas_over_the_size_cap_is_refused_and_its_button_not_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPBOT_IMAGINE_MAX_SIZE", "48")
    with TestBot(data_dir=tmp_path) as bot:
        first = bot.ask(f"/imagine a lighthouse {SMALL}")
        labels = [a.label for a in first.actions]
        refused = bot.ask(f"/imagine from_job: {first.data['job']} mode: upscale")
    assert "Zoom out 1.5x" in labels and "Upscale x2" not in labels and "Zoom out 2x" not in labels
    assert refused.error and "upscale would make 32x32 into 64x64; the largest side allowed here is 48 px" in refused.text


def test_settings_fill_what_a_command_leaves_out_per_user(local):
    saved = final_of(say(local, "/settings size: 32 drawer: pixels every: 2"))
    assert saved.ephemeral and saved.data == {"size": "32x32", "drawer": "pixels", "every": 2, "private": False}
    mine = final_of(say(local, "/imagine a meadow steps: 4"))
    assert mine.data["size"] == "32x32" and "pixels" in mine.text and mine.data["snapshots"][1:] == [
        "step-0002.png", "step-0004.png"]
    asked = final_of(say(local, "/imagine a meadow steps: 4 size: 48"))  # what is typed wins
    assert asked.data["size"] == "48x48"
    cleared = final_of(say(local, "/settings clear: yes"))
    assert cleared.data == {"private": False}
    bad = say(local, "/settings size: 9000")[-1]
    assert bad.error and "largest side allowed" in bad.text


def test_delete_removes_the_jobs_files_and_record(local):
    final = final_of(say(local, f"/imagine a paper boat {SMALL}"))
    job = final.data["job"]
    engine = local.dispatcher.engine
    result = engine.book.get(job).result
    engine.blobs.get(result["final"])  # there before
    delete = next(a for a in final.actions if a.label == "Delete")
    deleted = final_of(say(local, action_command(delete)))
    assert "Deleted" in deleted.text and "[deleted: that answer is gone from the chat]" in local.buffer.getvalue()
    assert engine.book.get(job) is None
    for key in (result["final"], result["state"], result["frames"], *[s["key"] for s in result["snapshots"]]):
        try:
            engine.blobs.get(key)
            raise AssertionError(f"blob {key} of the deleted job is still there")
        except Exception as exc:  # BlobMissing
            assert "no longer available" in str(exc)
    again = say(local, f"/params {job}")[-1]
    assert again.error and "can't find that finished /imagine job" in again.text


def test_a_finished_job_survives_a_restart_of_the_embedded_engine(tmp_path):
    with TestBot(data_dir=tmp_path) as bot:
        first = bot.ask(f"/imagine a windmill {SMALL} seed: 8")
    assert (tmp_path / "results" / bot_result_key(tmp_path, first.data["job"])).is_file()
    with TestBot(data_dir=tmp_path) as bot:  # a new process: nothing of the first in memory
        params = bot.ask(f"/params {first.data['job']}")
        cont = bot.ask(f"/imagine from_job: {first.data['job']} mode: continue steps: 2")
    assert not params.error and params.data["seed"] == 8
    assert not cont.error, cont.text
    assert cont.data["steps"] == 6 and cont.data["loss"][:4] == first.data["loss"]


def bot_result_key(data_dir, job_id):
    """The final picture's blob key, read from the archived record in the state file."""
    import sqlite3
    import json

    with sqlite3.connect(data_dir / "state.sqlite3") as db:
        (value,) = db.execute("SELECT value FROM kv WHERE key = ?", (f"clipbot:finished-job:{job_id}",)).fetchone()
    return json.loads(value)["result"]["final"]
