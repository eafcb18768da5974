"""A synthetic microCT-like phantom: the embedded default dataset.

Each case is a uint16 image and a uint8 label volume, axes (z, y, x):

- air (dark, noisy) around a textured, noisy body filling most of the volume;
- label 1 "mid-gut": a large tortuous tube inside the body;
- label 2 "hind-gut": a thin tube (a third of the mid-gut's radius) that leaves
  one end of the mid-gut and wanders off; a few per cent of the foreground;
- distractors (label 0): two to four thin tubes and maybe one thick one that
  look exactly like the gut but never touch it.

Every voxel within a tube's radius takes the same intensity (one mean, one
texture, one noise) whatever the tube, so a voxel's neighbourhood does not say
whether it is mid-gut, hind-gut or distractor: only the wider context does
(which tube joins which, and how thick it is next to its neighbours), the
difficulty the paper's cascade is built for. Partial-volume blending is done
in a one-voxel rim *outside* the tubes, never inside.

The context phantom (``PhantomConfig(context_distance=D)``, ``meunet phantom
--context D``) puts the cue at a set distance instead. Every thin tube (the
hind-gut and more thin distractors than in the classic phantom) has the same
radius, and small spheres ("markers", clear of every tube) of two kinds sit
within D/2 of thin tubes' centrelines: bright ones (brighter than anything
else) and dark ones (as dark as the air). The label rule is voxel-wise: a
voxel of a thin tube is 2 iff a bright marker's centre (a whole voxel) lies
within D of it (Euclidean), and 0 iff a dark one does; thin tubes are cut
away wherever neither holds with a margin (no marker within D, or one of the
other kind within 1.5 D, ``context_margin``). So both classes have a visible
cue, never a near call: telling them apart needs a view of up to D around a
voxel (markers sit within D/2 of the centrelines, so the deciding one is
often nearer). The mid-gut is 1, the thick distractor and the markers 0. Markers are
placed so that the two classes are about even. ``context_distance=0`` (the
default) renders the classic phantom byte for byte.

Rendering streams along z: tubes are polylines whose segments are drawn only
into the slab they cross, textures are analytic functions of (z, y, x) and the
noise of slice z comes from its own seed, so a slab renders bit-identically
however the volume is cut, and a paper-scale case (1072 x 470 x 470) is
written to Zarr in a few hundred MB of memory.

Example:
    >>> spec = make_phantom_dataset("runs/phantom", cases=6)   # doctest: +SKIP
    >>> image, label = render_case(PhantomConfig(), seed=0, case=0, z0=60, z1=68)
    >>> image.dtype, label.shape
    (dtype('uint16'), (8, 96, 96))
"""

from __future__ import annotations

from meunet.data.phantom.config import CLASSES, PhantomConfig
from meunet.data.phantom.dataset import make_phantom_dataset, write_case
from meunet.data.phantom.geometry import PhantomGeometry, Tube
from meunet.data.phantom.render import phantom_geometry, render_case, tube_map

__all__ = [
    "CLASSES",
    "PhantomConfig",
    "PhantomGeometry",
    "Tube",
    "make_phantom_dataset",
    "phantom_geometry",
    "render_case",
    "tube_map",
    "write_case",
]
