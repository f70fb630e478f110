"""Every benchmark still runs: each one's `--smoke` mode (tiny presets, a few iterations) as a
subprocess, and its output still has the ratio lines it exists to print. The numbers are not checked:
benchmarks report, tests assert behaviour."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, clipbot_env

# bench -> the lines that carry its ratios against the reference measured in the same run
RATIO_LINES = {
    "clip_cpu.py": [r"^onnx over eager: image b1 [\d.]+x · image b32 [\d.]+x · text b1 [\d.]+x · text b32 [\d.]+x$"],
    "whatis.py": [r"^embedded .* \d+\.\d+x$", r"^redis\+worker \(solo\) .* \d+\.\d+x$"],
    "imagine.py": [r"^\s*32\^2 reference\s+[\d.]+\s+1\.00\b", r"^\s*32\^2 ours\s+[\d.]+\s+[\d.]+\s.*\byes$"],
    "search.py": [r"^\s*1000\s+embedded\s+none\s", r"whole path [\d.]+/s, ratio [\d.]+x$",
                  r"^\s*1000 text rows: \d+% of pictures with OCR words .* query words are in rows: p50 \d+",
                  r"^\s*1000\s+embedded\s+none\s+[\d.]+\s+[\d.]+\s+index\.text_search k=\d+$",
                  r"^\s*1000\s+embedded\s+1 of 20\s+[\d.]+\s+[\d.]+\s+/search fused \(words \+ CLIP\): "
                  r"[\d.]+x clip only at p50, [\d.]+x at p99$",
                  r"^ocr \d+ slides .* words read back [\d.]+%$", r"OCR on [\d.]+/s vs off [\d.]+/s, ratio [\d.]+x$"],
    "slack_ack.py": [r'"ack_p99_ratio_vs_reference": [\d.]+', r'"acks_within_3s": "10/10"'],
    "discord_adapter.py": [r"^bare .* 1\.00x$", r"^labels .* [\d.]+x$", r"^whatis .* [\d.]+x$"],
}


def _bench_args(bench: str, redis_url: str) -> list[str]:
    if bench != "whatis.py":
        return []
    host, db = redis_url.removeprefix("redis://").rsplit("/", 1)
    return ["--pools", "solo", "--redis-host", host, "--redis-db", db]  # the test's own db: the bench flushes it


@pytest.mark.slow
@pytest.mark.parametrize("bench", sorted(RATIO_LINES))
def test_every_benchmark_smoke_mode_prints_its_ratio_lines(bench, redis_url, tmp_path):
    done = subprocess.run([sys.executable, f"bench/{bench}", "--smoke", *_bench_args(bench, redis_url)], cwd=ROOT,
                          capture_output=True, text=True, timeout=240, env=clipbot_env(tmp_path, None))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for pattern in RATIO_LINES[bench]:
        assert re.search(pattern, done.stdout, re.M), f"{bench} --smoke printed no line matching {pattern!r}:\n{output}"
    assert "failed:" not in done.stdout, output  # whatis.py reports a crashed engine path as a note


@pytest.mark.slow
def test_gpu_check_wrapper_prints_its_table_on_a_cpu(tmp_path):
    """bench/gpu_check.sh, the GPU machine's one command, on a CPU: the same table from tiny
    presets, every /imagine loop compared with the reference, and its goal line."""
    env = {**clipbot_env(tmp_path, None), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"^# nvidia-smi: ", done.stdout, re.M), output
    assert re.search(r"^imagine 32\^2 reference\s+[\d.]+ it/s\s+1\.00x", done.stdout, re.M), output
    for loop in ("reference-frozen", "ours fp32", "ours bf16", "ours channels_last", "ours fp16\\+channels_last"):
        assert re.search(rf"^imagine 32\^2 {loop}\s+[\d.]+ it/s\s+[\d.]+x\s+[\d.e+-]+\s+[\d.e+-]+ .*(yes|NO)$",
                         done.stdout, re.M), f"no row for {loop}:\n{output}"
    assert re.search(r"^clip encode_image bs8 bf16 autocast\s+[\d.]+ img/s", done.stdout, re.M), output
    assert re.search(r"^search backfill 8 pics: whole path\s+[\d.]+ img/s", done.stdout, re.M), output
    assert re.search(r"^goal: ours >= 1\.5x the reference's it/s: ", done.stdout, re.M), output
    assert "failed:" not in done.stdout, output
