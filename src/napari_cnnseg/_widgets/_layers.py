"""Result and scribble layers of one image: created once, then updated in place.

The layers the docks make are named after the source image (``<image> labels``,
``<image> p(<class>)``, ``<image> uncertainty``, ``<image> scribbles``), but they are **found**
by the role key in their metadata (:func:`napari_cnnseg._napari_io.find_layer`), never by name
or class name: napari hands plugin docks proxies of its viewer and layers, and users rename
layers. Every layer lies on the source's scale / translate / affine and carries its geometry.

Colours are one per class everywhere: class c is ``class_color(c)`` in the labels layer and in
the probability map; scribble value k (= class k-1, 0 = unlabelled) has the colour of class k-1.
"""

from __future__ import annotations

import logging
from typing import Any

from .._colors import class_color, class_colormap
from .._napari_io import find_layer, geometry_kwargs, layer_role, role_metadata, unwrap
from .._session import RegionUpdate, Session
from ..core.errors import InputError

logger = logging.getLogger(__name__)

#: gamma of the probability maps: a hesitant 0.5 shows as a faint 0.25 glow, a sure 0.9 at 0.81,
#: so an early or untrained net does not wash the whole image in the class colour
PROBABILITY_GAMMA = 2.0
#: the label map is drawn as outlines (pixels) over the probability glow: the result is the line
LABELS_CONTOUR = 1


def labels_colormap(class_names: list[str], *, scribbles: bool = False) -> Any:
    """DirectLabelColormap: class c -> class_color(c) (0 transparent); scribble k -> class k-1."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for c in range(len(class_names)):
        if scribbles:
            colors[c + 1] = class_color(c)
        elif c > 0:
            colors[c] = class_color(c)
    return DirectLabelColormap(color_dict=colors)


def labels_features(class_names: list[str], *, scribbles: bool = False) -> dict[str, Any]:
    """Labels layer features, so that hovering shows the class name of a value."""
    if scribbles:
        return {"index": list(range(len(class_names) + 1)), "class": ["unlabelled", *class_names]}
    return {"index": list(range(len(class_names))), "class": list(class_names)}


def result_names(image_name: str, class_names: list[str]) -> dict[str, Any]:
    """Names given to new output layers of an image."""
    return {
        "labels": f"{image_name} labels",
        "probabilities": [f"{image_name} p({c})" for c in class_names],
        "uncertainty": f"{image_name} uncertainty",
        "scribbles": f"{image_name} scribbles",
    }


def scribbles_layer(viewer: Any, image_name: str) -> Any:
    """The scribbles layer of image ``image_name`` (unwrapped), or None."""
    return find_layer(viewer.layers, "scribbles", image_name)


def _add(viewer: Any, kind: str, data: Any, **kwargs: Any) -> Any:
    adder = viewer.add_labels if kind == "labels" else viewer.add_image
    return unwrap(adder(data, **kwargs))


def _image_layer(viewer: Any, image: Any, role: str, data: Any, add: dict[str, Any],
                 **match: Any) -> Any:
    """Update the ``role`` layer of ``image`` in place (same shape) or (re)create it."""
    layer = find_layer(viewer.layers, role, image.name, **match)
    if layer is not None and layer.data.shape == data.shape:
        layer.data = data
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return _add(viewer, "image", data, **add, **geometry_kwargs(image))


def _show_probabilities(viewer: Any, image: Any, session: Session) -> list[Any]:
    names = session.class_names
    wanted = result_names(image.name, names)["probabilities"]
    out = []
    for k, (pname, prob) in enumerate(zip(wanted, session.results.probabilities, strict=True)):
        meta = role_metadata(image, "probability", class_index=k, class_name=names[k])
        layer = _image_layer(
            viewer, image, "probability", prob,
            dict(name=pname, colormap=class_colormap(k), blending="additive",
                 contrast_limits=(0.0, 1.0), gamma=PROBABILITY_GAMMA, visible=k > 0,
                 opacity=0.8, metadata=meta),
            class_index=k,
        )
        if layer_role(layer).get("class_name") != names[k]:  # same index, new model's class
            layer.name, layer.metadata = pname, meta
            layer.colormap = class_colormap(k)
        layer.contrast_limits = (0.0, 1.0)
        out.append(layer)
    for layer in list(viewer.layers):  # classes the current model does not have
        info = layer_role(layer)
        if (info.get("role") == "probability" and info.get("source") == image.name
                and int(info.get("class_index", 0)) >= len(names)):
            viewer.layers.remove(unwrap(layer))
    return out


def show_results(viewer: Any, image_layer: Any, session: Session) -> dict[str, Any]:
    """Create or update (in place) the labels / probability / uncertainty layers of the image.

    The scribbles layer of the image, if any, stays on top and stays the active layer when it
    was (or when a result layer became active), so the next brush stroke lands in it.

    Returns:
        dict with keys labels, probabilities (list), uncertainty -> the (unwrapped) layers.
    """
    image = unwrap(image_layer)
    res = session.results
    if res is None:
        raise InputError("nothing to show yet: run Segment first")
    active = unwrap(viewer.layers.selection.active)
    names = session.class_names
    wanted = result_names(image.name, names)
    out: dict[str, Any] = {"probabilities": _show_probabilities(viewer, image, session)}
    unc = _image_layer(
        viewer, image, "uncertainty", res.uncertainty,
        dict(name=wanted["uncertainty"], colormap="inferno", blending="additive",
             contrast_limits=(0.0, 1.0), visible=False,
             metadata=role_metadata(image, "uncertainty")),
    )
    unc.contrast_limits = (0.0, 1.0)
    out["uncertainty"] = unc
    labels = find_layer(viewer.layers, "labels", image.name)
    if labels is not None and labels.data.shape == res.labels.shape:
        labels.data = res.labels
    else:
        if labels is not None:
            viewer.layers.remove(labels)
        labels = _add(viewer, "labels", res.labels, name=wanted["labels"], opacity=0.8,
                      **geometry_kwargs(image))
        labels.contour = LABELS_CONTOUR
    if layer_role(labels).get("class_names") != names:  # new layer or other classes
        labels.metadata = role_metadata(image, "labels", class_names=names)
        labels.colormap = labels_colormap(names)
        labels.features = labels_features(names)
    out["labels"] = labels
    keep_scribbles_ready(viewer, image.name, active)
    return out


def keep_scribbles_ready(viewer: Any, image_name: str, active: Any = None) -> Any:
    """Scribbles layer on top of the results and active (brush mode) unless another layer the
    user chose is active; returns it (None without one)."""
    layer = scribbles_layer(viewer, image_name)
    if layer is None:
        return None
    layers = [unwrap(x) for x in viewer.layers]
    index = next(i for i, x in enumerate(layers) if x is layer)
    if index != len(layers) - 1:
        viewer.layers.move(index, len(layers))
    user_layer = active is not None and not layer_role(active) and any(
        active is x for x in layers)
    if not user_layer:
        viewer.layers.selection.active = layer
        if layer.mode not in ("paint", "erase", "fill"):
            layer.mode = "paint"
    return layer


def refresh_region(viewer: Any, image_layer: Any, session: Session, update: RegionUpdate) -> bool:
    """Write a live region update into the results and redraw the output layers showing them."""
    if not session.apply_region(update):
        return False
    res = session.results
    source = unwrap(image_layer).name
    shown = [(find_layer(viewer.layers, "labels", source), res.labels, update.labels),
             (find_layer(viewer.layers, "uncertainty", source), res.uncertainty,
              update.uncertainty)]
    for k, (full, part) in enumerate(zip(res.probabilities, update.probabilities, strict=True)):
        shown.append((find_layer(viewer.layers, "probability", source, class_index=k), full, part))
    for layer, full, part in shown:
        if layer is None:
            continue
        if layer.data is not full and layer.data.shape == full.shape:
            layer.data[update.roi] = part
        if layer.visible:
            layer.refresh()
    return True
