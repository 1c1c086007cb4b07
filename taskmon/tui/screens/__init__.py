"""The app's screens: the main view, an attempt's detail, the key help."""
