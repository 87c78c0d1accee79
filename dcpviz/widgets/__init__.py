"""ipywidgets apps composed from views; they hold no analysis logic."""

from dcpviz.widgets.explorer import Explorer, explore

__all__ = ["Explorer", "explore"]
