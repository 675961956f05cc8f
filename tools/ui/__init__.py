"""Per-module UI descriptions for tools/make_ui.py."""
