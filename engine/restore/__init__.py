"""Specialist restoration steps (sr, text, reflection, deblur, face), profiles and tiling."""
