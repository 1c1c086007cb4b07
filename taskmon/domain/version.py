"""The version of taskmon: stamped on worker rows, hub greetings and webhooks."""

__version__ = "0.1.0"
