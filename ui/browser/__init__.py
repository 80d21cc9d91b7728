"""Thumbnail browser: model, delegate, disk-cached thumbnail loader, grid view."""
