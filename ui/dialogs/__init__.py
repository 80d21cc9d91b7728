"""Dialogs: settings, model manager, about."""
