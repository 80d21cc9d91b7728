"""Mend's desktop app (PySide6). Talks to the engine only through ``ui.engine_client``."""
