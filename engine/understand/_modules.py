"""Imports every classifier backend so that it registers."""
from __future__ import annotations
