"""The live-figure pattern behind every interactive plot in the workbook.

``interact``/``interactive_output`` draw inside an Output widget: strict nbval
sees the figure escape into the cell outputs, and GitHub or exported HTML show
nothing. Instead, :class:`LiveFigure` draws a ``matplotlib.figure.Figure`` (not
pyplot), displays it with a display id -- so the notebook also holds a static
PNG -- and redraws that same display from the controls' ``observe`` callbacks.

The draw function is a plain function ``draw(fig, **values) -> result``; its
return value is kept in ``.result`` so a notebook cell (or a test) can assert
what the plot shows. Setting a widget's ``value`` fires observers
synchronously, so everything here is testable in pytest without a browser.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import ipywidgets as W
from matplotlib.figure import Figure

__all__ = ["LiveFigure"]


class LiveFigure:
    """ipywidgets controls driving one matplotlib Figure.

    >>> lf = LiveFigure(draw, {"bits": W.IntSlider(8, 2, 8)})
    >>> lf.show()                          # in a notebook: controls + static PNG
    >>> lf.controls["bits"].value = 4      # redraws; lf.result is draw's return
    """

    def __init__(
        self,
        draw: Callable[..., Any],
        controls: Mapping[str, W.ValueWidget],
        *,
        figsize: tuple[float, float] = (7.0, 3.2),
        layout: str = "h",
    ):
        if not callable(draw):
            raise TypeError(f"draw must be callable as draw(fig, **values), got {type(draw).__name__}")
        if not isinstance(controls, Mapping) or not controls:
            raise TypeError("controls must be a non-empty dict of name -> ipywidgets value widget")
        for name, w in controls.items():
            if not isinstance(w, W.ValueWidget):
                raise TypeError(f"controls[{name!r}] must be an ipywidgets value widget, got {type(w).__name__}")
        if layout not in ("h", "v"):
            raise ValueError(f"layout must be 'h' or 'v', got {layout!r}")
        self.draw = draw
        self.controls = dict(controls)
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.layout = layout
        self.result: Any = None
        self.redraws = 0
        self._handle = None
        self.redraw()
        for w in self.controls.values():
            w.observe(self._on_change, names="value")

    def values(self) -> dict[str, Any]:
        return {name: w.value for name, w in self.controls.items()}

    def redraw(self) -> Any:
        self.figure.clear()
        self.result = self.draw(self.figure, **self.values())
        self.redraws += 1
        if self._handle is not None:
            self._handle.update(self.figure)
        return self.result

    def _on_change(self, change) -> None:
        self.redraw()

    def box(self) -> W.Box:
        children = list(self.controls.values())
        return W.HBox(children) if self.layout == "h" else W.VBox(children)

    def show(self) -> "LiveFigure":
        """Display the controls, then the figure under a display id that redraws update."""
        from IPython.display import display

        display(self.box())
        self._handle = display(self.figure, display_id=True)
        return self

    def png(self) -> bytes:
        """The figure as PNG bytes (what the notebook stores); tests compare these."""
        import io

        buf = io.BytesIO()
        self.figure.savefig(buf, format="png")
        return buf.getvalue()
