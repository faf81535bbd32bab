"""Class colours shared by the scribbles, labels and probability layers (no Qt, no napari)."""

from __future__ import annotations

#: RGBA colour of each class index (class 0 = background); scribble value k uses colour k-1
CLASS_COLORS: tuple[tuple[float, float, float, float], ...] = (
    (0.55, 0.55, 0.60, 1.0),  # background: grey-blue (visible for background scribbles)
    (1.00, 0.25, 0.20, 1.0),  # red
    (0.20, 0.90, 0.25, 1.0),  # green
    (0.25, 0.45, 1.00, 1.0),  # blue
    (1.00, 0.20, 1.00, 1.0),  # magenta
    (1.00, 0.90, 0.15, 1.0),  # yellow
    (0.15, 0.95, 0.95, 1.0),  # cyan
    (1.00, 0.55, 0.10, 1.0),  # orange
)
#: napari colormap names with the same hue as CLASS_COLORS (for the probability layers)
CLASS_COLORMAPS: tuple[str, ...] = (
    "gray",
    "red",
    "green",
    "blue",
    "magenta",
    "yellow",
    "cyan",
    "I Orange",
)


def class_color(index: int) -> tuple[float, float, float, float]:
    """RGBA colour of class ``index`` (cycles after the first eight)."""
    if index < len(CLASS_COLORS):
        return CLASS_COLORS[index]
    return CLASS_COLORS[1 + (index - 1) % (len(CLASS_COLORS) - 1)]


def class_colormap(index: int) -> str:
    """napari colormap name for the probability map of class ``index``."""
    if index < len(CLASS_COLORMAPS):
        return CLASS_COLORMAPS[index]
    return CLASS_COLORMAPS[1 + (index - 1) % (len(CLASS_COLORMAPS) - 1)]
