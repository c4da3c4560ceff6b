"""Long-running work in Django as persistent, observable actions."""

__version__ = "0.1.0.dev0"
