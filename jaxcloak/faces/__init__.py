"""Face detection, alignment and photo I/O at the NumPy edge.

`faces.detect` finds faces and 5 landmarks with the YuNet port; `faces.align`
warps faces to a model's landmark template differentiably, so cloak gradients
flow from a crop back to the full photo. The functions `detect.detect` and
`align.align` are not re-exported here: their names would shadow the modules.
"""

from jaxcloak.faces.align import (ARCFACE_TEMPLATE, similarity_transform,
                                  similarity_transform_jnp, warp_affine)
from jaxcloak.faces.detect import Detections, Detector

__all__ = [
    "ARCFACE_TEMPLATE", "Detections", "Detector", "similarity_transform",
    "similarity_transform_jnp", "warp_affine",
]
