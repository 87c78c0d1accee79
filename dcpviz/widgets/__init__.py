"""ipywidgets apps composed from views; they hold no analysis logic."""

from .explorer import Explorer, explore

__all__ = ["Explorer", "explore"]
