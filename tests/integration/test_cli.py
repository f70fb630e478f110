"""The `clipbot` command as operators and our acceptance checks use it (embedded engine)."""

import json

import pytest

from tests.conftest import png_header_only, run_clipbot as clipbot, write_image


def test_whatis_json_contract(data_dir, tmp_path):
    image = write_image(tmp_path / "p.png")
    out = clipbot(data_dir, "whatis", str(image), "--labels", "cat, dog, person, car", "--top", "3", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert set(answer) == {"model", "labels", "unsure"} and answer["model"] == "tiny-test"
    assert isinstance(answer["unsure"], bool)
    assert [set(item) for item in answer["labels"]] == [{"label", "score"}] * 3
    scores = [item["score"] for item in answer["labels"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert {item["label"] for item in answer["labels"]} <= {"cat", "dog", "person", "car"}


def test_whatis_explain_json_names_the_heat_map_files(data_dir, tmp_path):
    image = write_image(tmp_path / "e.png")
    out = clipbot(data_dir, "whatis", str(image), "--labels", "cat, dog", "--explain", "--json",
                  "--out", str(tmp_path / "answers"))
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert [e["label"] for e in answer["explain"]] == [item["label"] for item in answer["labels"]]
    for n, explained in enumerate(answer["explain"], 1):
        assert explained["heatmap"] == str(tmp_path / "answers" / f"whatis-where-{n}.png")
        assert (tmp_path / "answers" / f"whatis-where-{n}.png").read_bytes().startswith(b"\x89PNG")
    assert isinstance(answer["unsure"], bool)


def test_labels_teach_verb_takes_the_name_and_pictures(data_dir, tmp_path):
    from tests.support.mascot import mascot_file

    pictures = [str(mascot_file(tmp_path, shift)) for shift in range(2)]
    assert clipbot(data_dir, "labels", "set", "--labels", "cat, dog", "--channel", "C1").returncode == 0
    out = clipbot(data_dir, "labels", "teach", "--name", "mascot", *pictures, "--channel", "C1", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["labels"] == ["cat", "dog", "mascot"]
    answer = clipbot(data_dir, "whatis", str(mascot_file(tmp_path, 5)), "--channel", "C1", "--json")
    assert json.loads(answer.stdout)["labels"][0]["label"] == "mascot"


def test_whatis_default_labels_are_imagenet(data_dir, tmp_path, imagenet_labels_cached):
    out = clipbot(data_dir, "whatis", str(write_image(tmp_path / "q.png")), "--json")
    assert out.returncode == 0, out.stderr
    assert "preparing" not in out.stderr  # the cached ImageNet-1k matrix: the default is exactly that set
    answer = json.loads(out.stdout)
    assert len(answer["labels"]) == 5
    from engine.models.clip import IMAGENET_CLASSNAMES

    assert {item["label"] for item in answer["labels"]} <= set(IMAGENET_CLASSNAMES)


def test_describe_json_contract(data_dir, tmp_path):
    out = clipbot(data_dir, "describe", str(write_image(tmp_path / "d.png")), "--terms", "2", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert set(answer) == {"prompts", "terms"} and len(answer["prompts"]) == 4
    assert all(isinstance(p, str) and p for p in answer["prompts"])
    from plugins.describe.vocab import KINDS

    assert [(set(t), t["kind"]) for t in answer["terms"]] == [({"term", "kind", "score"}, k) for k in KINDS
                                                                for _ in range(2)]
    for kind in KINDS:
        scores = [t["score"] for t in answer["terms"] if t["kind"] == kind]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


def test_imagine_timelapse_json_names_the_gif_and_mp4_and_a_later_call_makes_them_again(data_dir, tmp_path):
    out = clipbot(data_dir, "imagine", "a paper lantern", "--steps", "4", "--size", "32", "--every", "2",
                  "--drawer", "pixels", "--seed", "5", "--timelapse", "--json", "--out", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    made = answer["timelapse"]
    assert made["gif"] == str(tmp_path / "o" / "timelapse.gif") and made["mp4"] == str(tmp_path / "o" / "timelapse.mp4")
    gif, mp4 = (tmp_path / "o" / "timelapse.gif").read_bytes(), (tmp_path / "o" / "timelapse.mp4").read_bytes()
    assert gif.startswith(b"GIF89a") and mp4[4:8] == b"ftyp" and made["bytes"] == {"gif": len(gif), "mp4": len(mp4)}
    assert made["steps"] == [0, 4] and made["of_frames"] == 5 and made["limit"] is None
    # another process, from the job the embedded engine kept: the same frames, the same GIF
    later = clipbot(data_dir, "timelapse", answer["job"], "--json", "--out", str(tmp_path / "later"))
    assert later.returncode == 0, later.stderr
    again = json.loads(later.stdout)
    assert again["job"] == answer["job"] and again["timelapse"]["gif"] == str(tmp_path / "later" / "timelapse.gif")
    assert (tmp_path / "later" / "timelapse.gif").read_bytes() == gif


def test_blend_json_names_its_pictures_and_their_weights(data_dir, tmp_path):
    red, blue = (str(write_image(tmp_path / f"{c}.png", color=rgb)) for c, rgb in (("r", (220, 20, 20)),
                                                                                   ("b", (20, 20, 220))))
    out = clipbot(data_dir, "blend", red, blue, "--prompt", "a kite", "--weights", "1 -0.5", "--steps", "2",
                  "--size", "32", "--seed", "3", "--json", "--out", str(tmp_path / "answers"))
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["pictures"] == [{"source": "r.png", "weight": 1.0}, {"source": "b.png", "weight": -0.5}]
    assert answer["size"] == "32x32" and answer["seed"] == 3 and answer["job"] and answer["parent"] is None
    assert answer["final"] == str(tmp_path / "answers" / "final.png")
    one = clipbot(data_dir, "blend", red, "--json")
    assert one.returncode == 2 and one.stdout == ""
    (line,) = one.stderr.strip().splitlines()
    assert "/blend takes 2 to 5 pictures (got 1)" in line


def _bad(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(30000, 30000))
    return [
        ([str(tmp_path / "missing.png")], "No such file"),
        ([str(text)], "isn't an image I can read"),
        ([str(bomb)], "limit is 40 megapixels"),
        ([str(write_image(tmp_path / "ok.png")), "--labels", "cat"], "at least two labels"),
        ([str(write_image(tmp_path / "ok2.png")), "--colour", "red"], "unrecognized arguments: --colour"),
        ([str(write_image(tmp_path / "ok3.png")), "--top", "x"], "invalid int value"),
    ]


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(data_dir, tmp_path):
    for args, message in _bad(tmp_path):
        out = clipbot(data_dir, "whatis", *args, "--json")
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2, (args, out.stderr)
        assert len(lines) == 1 and message in lines[0], (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""


def test_pillows_warning_and_thin_pictures_leave_exactly_our_line(data_dir, tmp_path):
    # 100 MP is past Pillow's warning threshold (89.5 MP), short of its error: it used to print
    # a DecompressionBombWarning and its source line before ours.
    big = tmp_path / "big.png"
    big.write_bytes(png_header_only(10000, 10000))
    out = clipbot(data_dir, "whatis", str(big))
    assert (out.returncode, out.stderr) == (2, "clipbot: That image is 10000×10000 pixels; the limit is 40 megapixels.\n")
    thin = write_image(tmp_path / "thin.png", size=(1, 16384))
    out = clipbot(data_dir, "whatis", str(thin))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == ("clipbot: That image is 1×16384 pixels, too long and thin; the longer side may be at "
                          "most 100 times the shorter.\n")


def test_invalid_setting_is_one_line(data_dir, tmp_path):
    out = clipbot(data_dir, "whatis", str(write_image(tmp_path / "s.png")), CLIPBOT_WHATIS_TOP="lots")
    assert out.returncode == 2 and out.stderr.strip().startswith("clipbot: invalid setting CLIPBOT_WHATIS_TOP")
    assert len(out.stderr.strip().splitlines()) == 1


def test_unavailable_model_is_one_line(data_dir, tmp_path):
    out = clipbot(data_dir, "whatis", str(write_image(tmp_path / "m.png")), "--labels", "a, b",
                  CLIPBOT_CLIP_MODEL="ViT-B-32:laion2b_s34b_b79k", CLIPBOT_MODEL_CACHE=str(tmp_path / "empty"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "clipbot models pull" in lines[0] and "CLIPBOT_CLIP_MODEL=tiny-test" in lines[0]


def test_models_pull_offline_is_one_line(data_dir, tmp_path):
    out = clipbot(data_dir, "models", "pull", "--clip", "ViT-B-32:laion2b_s34b_b79k", timeout=60,
                  CLIPBOT_MODEL_CACHE=str(tmp_path / "cache"), HF_ENDPOINT="http://127.0.0.1:9")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "ARCH:/path" in lines[0] or "copy" in lines[0].lower()
    assert "to try clipbot offline, set CLIPBOT_CLIP_MODEL=tiny-test" in lines[0]


def test_models_list_and_pull_preset(data_dir):
    listed = clipbot(data_dir, "models", "list")
    assert listed.returncode == 0 and "preset tiny-test" in listed.stdout and "meaningless" in listed.stdout
    pulled = clipbot(data_dir, "models", "pull")
    assert pulled.returncode == 0 and "nothing to download" in pulled.stdout


@pytest.mark.slow  # builds the real 80,000-prompt matrix
def test_models_pull_prepares_imagenet_labels(tmp_path):
    pulled = clipbot(tmp_path, "models", "pull", "--clip", "tiny-test")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.splitlines()[-1] == "tiny-test: ready"
    assert "preparing ImageNet-1k labels: " in pulled.stderr
    # the ImageNet label matrix and the "not sure" background's picture embeddings
    assert len(list((tmp_path / "cache" / "labels").glob("*.pt"))) == 2

    again = clipbot(tmp_path, "models", "pull", "--clip", "tiny-test")  # cached: nothing to prepare
    assert again.returncode == 0 and "preparing" not in again.stderr


def test_models_pull_no_prepare_only_downloads(tmp_path):
    pulled = clipbot(tmp_path, "models", "pull", "--clip", "tiny-test", "--no-prepare")
    assert pulled.returncode == 0 and "nothing to download" in pulled.stdout and "ready" not in pulled.stdout
    assert not list((tmp_path / "cache" / "labels").glob("*.pt"))


def test_local_chat_session(data_dir, tmp_path):
    image = write_image(tmp_path / "chat.png")
    script = f"/help\n/whatis {image} labels: cat, dog, person\n/post {image}\n/search sketch\nhello\n/quit\n"
    out = clipbot(data_dir, "run", stdin=script, CLIPBOT_DATA_DIR=str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert "/whatis: Say what is in a picture" in out.stdout
    assert "Looks like" in out.stdout or "I'm not sure" in out.stdout
    assert "[image saved: " in out.stdout
    assert "as message 1 (local://local/1)" in out.stdout  # /post, then /search finds it
    assert "1. local-user in #local" in out.stdout and "[More]" not in out.stdout
    assert "Commands start with /" in out.stdout
    assert "Traceback" not in out.stderr


def test_local_chat_says_which_model_and_whether_its_weights_are_here(tmp_path):
    missing = clipbot(tmp_path, "run", stdin="/quit\n", CLIPBOT_CLIP_MODEL="ViT-B-32:laion2b_s34b_b79k",
                      CLIPBOT_MODEL_CACHE=str(tmp_path / "empty"))
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout.splitlines()[1] == (
        "model: ViT-B-32:laion2b_s34b_b79k (weights not here: `clipbot models pull` downloads them; to try "
        "clipbot offline, set CLIPBOT_CLIP_MODEL=tiny-test: a tiny random model, meaningless answers)")
    weights = tmp_path / "vit.pt"
    weights.write_bytes(b"not looked into: only whether it is here")
    here = clipbot(tmp_path, "run", stdin="/quit\n", CLIPBOT_CLIP_MODEL=f"ViT-B-32:{weights}")
    assert here.returncode == 0 and here.stdout.splitlines()[1] == f"model: ViT-B-32:{weights} (weights here)"


def test_plugins_listing(data_dir):
    out = clipbot(data_dir, "plugins", CLIPBOT_EXTRA_PLUGINS="no_such_plugin_mod", CLIPBOT_WHATIS_TOP="3")
    assert out.returncode == 0
    assert "whatis: /whatis /where /labels" in out.stdout and "help: /help" in out.stdout
    assert "describe: /describe" in out.stdout and "imagine: /imagine /blend /params /settings /timelapse" in out.stdout
    assert "no_such_plugin_mod: NOT LOADED (ModuleNotFoundError" in out.stdout
    assert "setting CLIPBOT_WHATIS_TOP=3" in out.stdout
    assert "queue gpu: quick model work" in out.stdout and "queue io:" in out.stdout


def test_whatis_text_and_images_go_where_out_says(data_dir, tmp_path):
    image = write_image(tmp_path / "o.png")
    out = clipbot(data_dir, "whatis", str(image), "--labels", "cat, dog", "--out", str(tmp_path / "answers"))
    assert out.returncode == 0, out.stderr
    chart = tmp_path / "answers" / "whatis.png"
    assert f"[image saved: {chart}]" in out.stdout and chart.read_bytes().startswith(b"\x89PNG")
    assert "Looks like " in out.stdout or "I'm not sure" in out.stdout
    assert "**" not in out.stdout  # markup is rendered for the terminal


def test_help_is_a_verb_too(data_dir):
    out = clipbot(data_dir, "help", "whatis", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["command"] == "whatis" and answer["options"][0] == {"name": "image", "required": True}


def test_worker_refuses_an_undeclared_queue(data_dir):
    out = clipbot(data_dir, "worker", "--queues", "gpu,nope", CLIPBOT_BROKER_URL="redis://127.0.0.1:9/0")
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("clipbot: unknown queue 'nope'; the plugins declare: ")
    assert set(line.rsplit(": ", 1)[1].split(", ")) == {"gpu", "io", "gpu-long"}  # core + /imagine


def test_json_paths_replace_written_image_names():
    from bot.adapters.shell import with_paths as _with_paths

    data = {"final": "final.png", "snapshots": ["step-0004.png", "other"], "seed": 3}
    written = {"final.png": "/o/final.png", "step-0004.png": "/o/step-0004.png"}
    assert _with_paths(data, written) == {"final": "/o/final.png", "snapshots": ["/o/step-0004.png", "other"],
                                          "seed": 3}


@pytest.mark.parametrize("args", [[], ["frobnicate"]])
def test_usage_errors(data_dir, args):
    out = clipbot(data_dir, *args)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_cancel_of_an_unknown_job_exits_2_with_one_line(data_dir):
    out = clipbot(data_dir, "cancel", "0123456789abcdef")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and "No such job: 0123456789abcdef" in lines[0]


def test_run_with_redis_down_starts_says_so_and_works_once_redis_is_back(data_dir, tmp_path):
    """Issue 13, defect 10: `clipbot run` with Redis down at start exited 2. It starts, says once
    that it can't reach Redis (each command then answers that line), and works once Redis is up."""
    import shutil
    import socket
    import subprocess
    import sys

    from tests.conftest import ROOT, clipbot_env

    with socket.socket() as s:  # a port nothing listens on (yet)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chat = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=clipbot_env(data_dir, f"redis://127.0.0.1:{port}/0",
                                            CLIPBOT_DATA_DIR=str(tmp_path / "d")))
    server = None
    try:
        assert chat.stdout.readline().startswith("clipbot local chat.")
        assert chat.stdout.readline() == "model: tiny-test (the workers load it)\n"
        unreachable = chat.stdout.readline()
        assert f"can't reach Redis at 127.0.0.1:{port}" in unreachable, unreachable
        chat.stdin.write("/cancel 0123456789abcdef\n")
        chat.stdin.flush()
        assert chat.stdout.readline() == unreachable  # each command: that line
        server = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "",
                                   "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        from tests.support.polling import wait_until

        probe = redis.Redis(port=port)

        def up():
            try:
                return probe.ping()
            except redis.ConnectionError:
                return False

        wait_until(up, timeout=30, what="redis-server to start")
        chat.stdin.write("/cancel 0123456789abcdef\n/quit\n")
        chat.stdin.flush()
        rest, err = chat.communicate(timeout=120)
        assert "No such job: 0123456789abcdef" in rest, rest + err
        assert "can't reach Redis" not in rest and chat.returncode == 0, rest + err
        assert "Traceback" not in err, err
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
        if server is not None:
            server.kill()
            server.wait()
