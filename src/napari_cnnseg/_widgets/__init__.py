"""napari docks of napari-cnnseg (Qt lives only in this subpackage).

``SegmentWidget`` and ``FinetuneWidget`` are the widget contributions of ``napari.yaml``; both
share one :class:`~napari_cnnseg._session.Session` per viewer.
"""

from __future__ import annotations

from .finetune import FinetuneWidget
from .segment import SegmentWidget

__all__ = ["FinetuneWidget", "SegmentWidget"]
