"""clipbot chat side: command model, plugin system, dispatch and platform adapters (no torch here)."""

__version__ = "0.1.0"
