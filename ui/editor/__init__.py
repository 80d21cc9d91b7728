"""Viewer (before/after canvas) and the reflection-mask editor."""
