"""engine.safety's light parts: the blocklist reading, concept lists, policies and the audit log."""

from __future__ import annotations

import pytest

from engine.safety import (AuditEntry, AuditLog, Concept, SafetySettings, blocked_rule, choose_policy, normalize,
                           parse_blocklist, parse_concepts)
from engine.store import SqliteStore


@pytest.mark.parametrize("text, rule", [
    ("A NUDE model", "nsfw"), ("a nudé model", "nsfw"), ("n00d3 art", None), ("a n-u-d-e", None),
    ("nude", "nsfw"), ("Nudes", None), ("denuded hills", None), ("a sexy sunset", None), ("S3X", "adult"),
    ("Essex county", None), ("a ｎｕｄｅ model", "nsfw"), ("a blood bath scene", "gore"), ("bloodbath", None),
])
def test_the_blocklist_reads_whole_words_blind_to_case_accents_width_and_leetspeak(text, rule):
    phrases = parse_blocklist(["nsfw=nude", "adult=sex", "gore=blood  bath"])
    assert blocked_rule(text, phrases) == rule


def test_normalize_and_unnamed_entries():
    assert normalize("Ça  VA-bien!") == " ca va bien "
    assert parse_blocklist(["gore", " ", "x="]) == [("blocklist", " gore ")]


def test_concepts_parse_from_pairs_and_json_and_refuse_nonsense(tmp_path):
    pairs = parse_concepts(f"explicit nudity=0.28, {tmp_path}/bad.png=0.9")
    assert pairs == [Concept("explicit nudity", 0.28, text="explicit nudity"),
                     Concept("bad", 0.9, image=f"{tmp_path}/bad.png")]
    listed = parse_concepts('[{"name": "gore", "text": "a gory photo", "threshold": 0.26}]')
    assert listed == [Concept("gore", 0.26, text="a gory photo")]
    for bad, message in [("nudity", "not TEXT=THRESHOLD"), ("nudity=high", "not a number"),
                         ("nudity=2", "not a cosine"), ("[{]", "not valid JSON")]:
        with pytest.raises(ValueError, match=message):
            parse_concepts(bad)


def test_settings_defaults_skip_test_models_and_bad_values_name_the_variable(monkeypatch):
    from pydantic import ValidationError

    settings = SafetySettings.load()
    assert settings.policy == "blur" and settings.output_concepts(meaningless=True) == []
    assert {c.name for c in settings.output_concepts(meaningless=False)} >= {"explicit nudity", "graphic gore"}
    monkeypatch.setenv("CLIPBOT_SAFETY_CONCEPTS", "")
    assert SafetySettings.load().output_concepts(meaningless=False) == []  # explicitly none
    monkeypatch.setenv("CLIPBOT_SAFETY_CONCEPTS", "gore=lots")
    with pytest.raises(ValidationError, match="not a number"):
        SafetySettings.load()


def test_a_channels_policy_wins_then_age_restriction_then_the_default():
    assert choose_policy("stop", nsfw=True, default="blur") == "stop"
    assert choose_policy(None, nsfw=True, default="blur") == "allow"
    assert choose_policy(None, nsfw=False, default="stop") == "stop"


def test_the_audit_log_appends_per_space_newest_first_and_keeps_the_newest(tmp_path):
    log = AuditLog(SqliteStore(tmp_path / "s.sqlite3"), keep=10)
    for i in range(13):
        log.record("discord", "G1", AuditEntry(action="refused", rule=f"r{i}", user="u", channel="c", at=1000.0 + i))
    log.record("discord", "G2", AuditEntry(action="blurred", rule="x", user="v", channel="d", job_id="j"))
    newest = log.recent("discord", "G1", 100)
    assert [e.rule for e in newest] == [f"r{i}" for i in range(12, 2, -1)]  # 10 kept, newest first
    (other,) = log.recent("discord", "G2")
    assert other.action == "blurred" and other.job_id == "j" and other.at > 0
    assert log.recent("slack", "G1") == []
