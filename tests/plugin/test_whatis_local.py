"""/whatis, /labels and /help through the local adapter on the embedded engine (real Celery,
memory transport, worker thread) with the tiny-test CLIP preset."""

import asyncio
import dataclasses
import io

import pytest
from PIL import Image

from bot.markup import render_plain
from engine.blobs import BlobMissing
from tests.conftest import write_image
from tests.unit.test_images import animation, encode, noise, png_header_only


def say(local, line):
    """The replies to `line`, with their text as the local chat shows it (markup rendered)."""
    return [dataclasses.replace(r, text=render_plain(r.text)) for r in asyncio.run(local.handle_line(line))]


def final(replies):
    assert replies[-1].final
    return replies[-1]


def ranked(reply):
    """The numbered guesses in a /whatis answer: [(label, percent)]."""
    out = []
    for line in reply.text.splitlines():
        head, sep, pct = line.rpartition(": ")
        if sep and head[:1].isdigit() and ". " in head and pct.endswith("%"):
            out.append((head.split(". ", 1)[1], 0.05 if pct == "<0.1%" else float(pct[:-1])))
    return out


def test_help_lists_commands(local):
    text = final(say(local, "/help")).text
    for expected in ("/whatis", "/labels", "/help", "/imagine", "/cancel", "/search: Find pictures", "/index"):
        assert expected in text
    assert "Usage: /whatis image: <image>" in final(say(local, "/help whatis")).text


def test_whatis_custom_labels(local, red_png):
    reply = final(say(local, f"/whatis {red_png} labels: cat, dog, person"))
    assert not reply.error, reply.text
    guesses = ranked(reply)
    assert sorted(label for label, _ in guesses) == ["cat", "dog", "person"]
    assert [p for _, p in guesses] == sorted((p for _, p in guesses), reverse=True)
    assert sum(p for _, p in guesses) == pytest.approx(100, abs=0.2)
    assert "tiny-test is a random test model" in reply.text
    chart = Image.open(io.BytesIO(reply.images[0].data))
    assert chart.format == "PNG" and chart.width == 640
    assert "[image saved: " in local.buffer.getvalue()


def test_whatis_positional_labels_and_top(local, red_png):
    reply = final(say(local, f"/whatis {red_png} cat, dog, person, car top: 2"))
    assert len(ranked(reply)) == 2


def test_whatis_default_is_imagenet(local, red_png, imagenet_labels_cached):
    replies = say(local, f"/whatis {red_png}")
    reply = final(replies)
    assert not reply.error, reply.text
    assert [r.progress for r in replies] == [None]  # the ImageNet matrix was found: nothing to prepare
    assert len(ranked(reply)) == 5
    assert "labels: ImageNet-1k" in reply.text


def test_label_sets_per_channel(local, red_png, embedded, tmp_path):
    assert "No label sets here" in final(say(local, "/labels show")).text
    saved = final(say(local, "/labels set cat, dog, person"))
    assert "Saved 3 labels as 'default'" in saved.text
    reply = final(say(local, f"/whatis {red_png}"))
    assert "labels: this channel's labels" in reply.text
    assert sorted(label for label, _ in ranked(reply)) == ["cat", "dog", "person"]

    assert "Saved 2 labels as 'pets'" in final(say(local, "/labels set hamster, parrot name: pets")).text
    reply = final(say(local, f"/whatis {red_png} labels: pets"))
    assert sorted(label for label, _ in ranked(reply)) == ["hamster", "parrot"]
    assert "pets: hamster, parrot" in final(say(local, "/labels show")).text

    # another channel does not see them
    from bot.adapters.local import LocalAdapter

    other = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path / "o", channel_id="elsewhere")
    assert "labels: ImageNet-1k" in final(say(other, f"/whatis {red_png}")).text

    assert "Removed the label set 'pets'" in final(say(local, "/labels clear pets")).text
    assert "no label set called 'pets'" in final(say(local, f"/whatis {red_png} labels: pets")).text
    assert "Removed all" in final(say(local, "/labels clear")).text


def test_only_admins_change_label_sets(embedded, tmp_path):
    from bot.adapters.local import LocalAdapter

    user = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path, channel_id="c-user", is_admin=False)
    reply = final(say(user, "/labels set cat, dog"))
    assert reply.error and "Only admins" in reply.text
    assert "No label sets here" in final(say(user, "/labels show")).text


@pytest.mark.parametrize("line, expected", [
    ("/whatis {img} labels: cat", "at least two labels"),
    ("/whatis {img} top: 50", "top must be between 1 and 20"),
    ("/whatis {img} top: many", "must be a whole number"),
    ("/whatis {img} colour: red", "/whatis has no option 'colour'"),
    ("/whatis", "/whatis needs 'image'"),
    ("/whatis /no/such/file.png", "No such file"),
    ("/labels frobnicate", "must be one of: set, show, clear"),
    ("/whatsit {img}", "Did you mean /whatis?"),
    ("hello there", "Commands start with /"),
    ('/whatis "{img}', "check your quotes"),
])
def test_user_errors_are_clear(local, red_png, line, expected):
    reply = final(say(local, line.format(img=red_png)))
    assert reply.error and expected in reply.text, reply.text


def _bad_inputs(tmp_path):
    good = encode(noise((80, 60)), "PNG")
    cmyk = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")
    sixteen = Image.new("I;16", (40, 30))
    sixteen.putdata([i * 50 for i in range(40 * 30)])
    rotated = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "zero.png": (b"", "empty"),
        "truncated.png": (good[: len(good) // 2], "truncated or corrupt"),
        "text.png": (b"hello, this is not an image\n" * 20, "isn't an image I can read"),
        "bomb.png": (png_header_only(30000, 30000), "limit"),
        "anim.gif": (animation("GIF"), None),
        "cmyk.jpg": (cmyk, None),
        "sixteen.png": (encode(sixteen, "PNG"), None),
        "rotated.jpg": (encode(rotated, "JPEG", exif=exif), None),
    }


def test_bad_inputs_give_a_result_or_a_clear_error(local, tmp_path):
    for name, (data, error) in _bad_inputs(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        reply = final(say(local, f"/whatis {path} labels: cat, dog"))
        if error is None:
            assert not reply.error, f"{name}: {reply.text}"
            assert len(ranked(reply)) == 2
        else:
            assert reply.error and error in reply.text, f"{name}: {reply.text}"
            assert "Traceback" not in reply.text and "Error:" not in reply.text
    # the engine is still alive and answering
    ok = write_image(tmp_path / "after.png")
    assert not final(say(local, f"/whatis {ok} labels: cat, dog")).error


def test_oversized_upload_is_refused_before_reading(embedded, tmp_path):
    from bot.adapters.local import LocalAdapter

    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (embedded.settings.max_image_bytes + 1))
    adapter = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path)
    reply = final(say(adapter, f"/whatis {big}"))
    assert reply.error and "the limit is" in reply.text


def test_label_matrix_progress_reaches_the_chat(local, red_png, monkeypatch):
    """A new label set is encoded with progress events; the handler turns them into progress
    replies (shown live, before the answer)."""
    from engine import progress as build_progress

    monkeypatch.setattr(build_progress, "_REPORT_EVERY_S", 0.0)  # report every new percent, however fast
    labels = ", ".join(f"gadget model {i} {red_png.parent.name}" for i in range(12))  # never seen before
    replies = say(local, f"/whatis {red_png} labels: {labels}")
    progress = [r for r in replies if r.progress is not None]
    assert final(replies) is replies[-1] and not replies[-1].error, replies[-1].text
    assert len(progress) >= 5 and all(not r.final for r in progress)
    assert all(r.text.startswith("preparing 12 labels: ") for r in progress)
    assert [r.progress for r in progress] == sorted(r.progress for r in progress) and progress[-1].progress == 1
    assert "[100%] preparing 12 labels\n" in local.buffer.getvalue()  # the percentage once

    again = say(local, f"/whatis {red_png} labels: {labels}")  # cached now: just the answer
    assert [r.progress for r in again] == [None]


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": [f"thing {i}" for i in range(5000)]}, "That's 5000 labels; the limit is 1000."),
    ({"labels": []}, "at least two labels"),
    ({"labels": ["cat"]}, "at least two labels"),
    ({"labels": ["cat", ""]}, "One of the labels is empty"),
    ({"labels": ["cat", "   "]}, "One of the labels is empty"),
    ({"labels": ["cat", "x" * 101]}, "is too long"),
    ({"labels": "cat, dog"}, "must be a list"),
    ({"labels": ["cat", 7]}, "must be a list"),
    ({"top": 0}, "top must be between 1 and 20"),
    ({"top": 21}, "top must be between 1 and 20"),
    ({"top": "3"}, "top must be between 1 and 20"),
    ({"top": True}, "top must be between 1 and 20"),
])
def test_classify_task_checks_its_arguments(embedded, red_png, kwargs, message):
    """Any client can submit the task (not only the handler): it refuses bad arguments itself."""
    from engine.errors import UserError
    from plugins.whatis import TASK

    args = {"image": embedded.engine.blobs.put(red_png.read_bytes()), "labels": ["cat", "dog"], "top": 2, **kwargs}
    with pytest.raises(UserError, match=message):
        asyncio.run(embedded.engine.run(TASK, args))


def test_classify_task_labels_none_is_imagenet_and_repeats_are_merged(embedded, red_png, imagenet_labels_cached):
    from plugins.whatis import TASK

    key = embedded.engine.blobs.put(red_png.read_bytes())
    result = asyncio.run(embedded.engine.run(TASK, {"image": key, "labels": [" Cat ", "cat", "dog"], "top": 5}))
    assert sorted(item["label"] for item in result["labels"]) == ["Cat", "dog"]
    from engine.models.clip import IMAGENET_CLASSNAMES

    with pytest.raises(BlobMissing):  # the job owned its upload: gone once it ended
        embedded.engine.blobs.get(key)
    key = embedded.engine.blobs.put(red_png.read_bytes())
    result = asyncio.run(embedded.engine.run(TASK, {"image": key, "labels": None, "top": 3}))
    assert len(result["labels"]) == 3 and {i["label"] for i in result["labels"]} <= set(IMAGENET_CLASSNAMES)


def test_cancelling_stops_a_label_matrix_build(embedded, red_png, monkeypatch):
    from engine.errors import JobCancelled
    from engine.jobs import PROGRESS
    from engine import progress as build_progress
    from plugins.whatis import TASK, pipeline, tasks

    monkeypatch.setattr(build_progress, "_REPORT_EVERY_S", 0.0)
    labels = [f"widget {i} {red_png.parent.name}" for i in range(1000)]  # 80,000 prompts, never seen
    engine = embedded.engine
    job_id = engine.submit(TASK, {"image": engine.blobs.put(red_png.read_bytes()), "labels": labels, "top": 3})
    seen = []

    async def follow():
        async for event in engine.follow(job_id):
            seen.append(event.kind)
            if event.kind == PROGRESS and seen.count(PROGRESS) == 1:
                await asyncio.to_thread(engine.cancel, job_id)

    with pytest.raises(JobCancelled):
        asyncio.run(follow())
    assert PROGRESS in seen and seen.count(PROGRESS) < 100  # stopped well before the end
    key = pipeline._cache_key(tasks.clip_for(embedded.settings), labels, pipeline.PROMPT_TEMPLATES)
    assert key not in pipeline._memory
    assert not (embedded.settings.data_dir / "cache" / "labels" / f"{key}.pt").exists()
