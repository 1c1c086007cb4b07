"""The terminal UI (`taskmon tui`): metrics, history and a live feed, driven by the keyboard.

Only this package (and the `tui` command) imports Textual; the core never does.
"""
