"""Degradation understanding: built-in analyzer, CLIP zero-shot, Qwen2.5-VL."""
