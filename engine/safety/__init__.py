"""Keeping generated pictures safe: what a prompt may ask, what a picture may show, who did what.

Light parts (no torch; handlers import them):
- `settings`: `SafetySettings` (CLIPBOT_SAFETY_*): blocklist, concepts, default policy, audit size;
- `rules`: the prompt blocklist (word-bounded, case- and accent-blind, simple leetspeak) and the
  concept list (`Concept`: a text, or an example picture, with its own cosine threshold);
- `policy`: per-channel policies (`allow`, `blur`, `stop`) and how one is chosen for a request;
- `audit`: the append-only, capped moderation log per space (`AuditLog`).
The heavy part, `engine.safety.check` (CLIP embeddings, the blur), only workers import.
"""

from engine.safety.audit import AuditEntry, AuditLog
from engine.safety.policy import (POLICIES, Moderation, channel_policy, choose_policy, owner_of, remember_owner,
                                  set_channel_policy)
from engine.safety.rules import Concept, blocked_rule, normalize, parse_blocklist, parse_concepts, refusal
from engine.safety.settings import SafetySettings, safety_settings

__all__ = ["POLICIES", "AuditEntry", "AuditLog", "Concept", "Moderation", "SafetySettings", "blocked_rule",
           "channel_policy", "choose_policy", "normalize", "owner_of", "remember_owner", "parse_blocklist", "parse_concepts", "refusal",
           "safety_settings", "set_channel_policy"]
