"""Packed layout ``slimq.segmented-bitplane.v1`` (SBP1): the on-disk and in-memory
form of a mixed-precision linear layer. Designed together with the kernels in
``slimq.kernels``.

The problem
-----------
SliM-LLM gives every group of input columns its own bit-width (1..8), MixLLM gives
every output row its own. A kernel wants long runs of uniform bit-width, dense
storage wants no padding bits.

The layout
----------
A linear ``y = x W^T`` with ``W [N, K]`` (out_features N, in_features K) is stored as:

* ``col_perm``  int32 ``[K]``: input columns in storage order; the kernel reads
  ``x[..., col_perm]``. Columns are sorted by (bit-width of their group, group id,
  position inside the group in g_idx order), so all groups of one bit-width are
  contiguous and each group stays contiguous. A short last group goes last in its
  bit-width run, so within a run group ``j`` covers columns ``[j*gs, (j+1)*gs)``.
  (When bit-widths vary along both rows and columns, the sort key is the tuple of
  a group's bit-widths over all row blocks, then group id; with rows of uniform
  width (MixLLM) this is just the group id.)
* ``row_perm``  int32 ``[N]`` or absent: output rows in storage order; present only
  when rows carry different bit-widths (MixLLM). Storage row ``i`` is original row
  ``row_perm[i]``, i.e. ``y[..., row_perm] = y_storage``.
* a list of **segments**. A segment is a rectangle of the permuted matrix,
  rows ``[r0, r1)`` x columns ``[c0, c1)``, holding one bit-width ``b`` and one group
  size ``gs`` (every group full except possibly the last one of the segment).
  SliM-LLM: one row range, one segment per bit-width. MixLLM: one row range per
  bit-width, each a single segment spanning all columns. Irregular group sizes
  (a short group that is not last in its run) just split a run into more
  segments; ``gs`` is the layer's largest group size. Kernels must accept any
  list of segments that tiles the matrix.

Per segment (``Ks = c1 - c0`` columns, ``Ns = r1 - r0`` rows, ``Gs = ceil(Ks/gs)`` groups):

* **bit planes**: the b-bit code is split into planes of power-of-two widths,
  widest first: 1=[1], 2=[2], 3=[2,1], 4=[4], 5=[4,1], 6=[4,2], 7=[4,2,1], 8=[8].
  ``q = p0 | p1 << w0 | p2 << (w0 + w1)``. So 3-bit weights take exactly 3 bits
  and 1-bit groups take 1 bit: no waste.
* each plane of width ``w`` is an int32 tensor ``[ceil(Ks * w / 32), Ns]``
  (K-major, like GPTQ's qweight, so consecutive output rows are consecutive
  words): word ``r``, slot ``j`` (``0 <= j < 32/w``) holds the code of segment
  column ``r * (32 // w) + j`` at bits ``[w*j, w*j + w)``. Slots past ``Ks`` are 0.
* ``scales`` float16 ``[Gs, Ns]`` and ``zeros`` float16 ``[Gs, Ns]``:
  ``w = (q - zero) * scale``. Zeros are kept in float16 (not packed ints)
  because 1-bit binarisation needs fractional zeros; cost: 32 bits per group
  and row for scale + zero, i.e. 0.25 bit/weight at gs=128, 0.5 at gs=64.

Tensor names in a checkpoint, for linear ``name`` and segment ``i``, plane ``p``::

    {name}.col_perm, {name}.row_perm (optional),
    {name}.seg{i}.plane{p}, {name}.seg{i}.scales, {name}.seg{i}.zeros

and the segment table (r0, r1, c0, c1, bits, group_size) goes to the JSON metadata.
"""
from __future__ import annotations

__all__ = ["LAYOUT_NAME", "PLANE_WIDTHS", "plane_widths"]

LAYOUT_NAME = "slimq.segmented-bitplane.v1"

PLANE_WIDTHS: dict[int, tuple[int, ...]] = {
    1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 7: (4, 2, 1), 8: (8,),
}


def plane_widths(bits: int) -> tuple[int, ...]:
    """Widths of the bit planes a ``bits``-bit code is stored in (widest first)."""
    try:
        return PLANE_WIDTHS[bits]
    except KeyError:
        raise ValueError(f"bits must lie in 1..8, got {bits}") from None


# --- in-memory form -----------------------------------------------------------------
from dataclasses import dataclass, field  # noqa: E402

import torch  # noqa: E402

__all__ += ["Segment", "PackedLinear"]


@dataclass
class Segment:
    """One uniform-bit-width rectangle ``rows [r0, r1) x cols [c0, c1)`` of the permuted
    weight. ``planes[p]`` is int32 ``[ceil((c1-c0) * w_p / 32), r1-r0]`` for
    ``w_p = plane_widths(bits)[p]``; ``scales``/``zeros`` are float16
    ``[ceil((c1-c0)/group_size), r1-r0]``."""

    r0: int
    r1: int
    c0: int
    c1: int
    bits: int
    group_size: int
    planes: list[torch.Tensor]
    scales: torch.Tensor
    zeros: torch.Tensor

    def meta(self) -> dict:
        return {"r0": self.r0, "r1": self.r1, "c0": self.c0, "c1": self.c1,
                "bits": self.bits, "group_size": self.group_size}


@dataclass
class PackedLinear:
    """A whole linear layer in layout ``slimq.segmented-bitplane.v1`` (see module doc)."""

    in_features: int
    out_features: int
    col_perm: torch.Tensor
    row_perm: torch.Tensor | None
    segments: list[Segment] = field(default_factory=list)
    layout: str = LAYOUT_NAME
    # whether col_perm is the identity: None until a kernel plan asks (``slimq.kernels.triton._perm.identity_perm``)
    perm_identity: bool | None = field(default=None, compare=False, repr=False)
    # the longest power-of-two run (<= 1024) over whose aligned blocks col_perm counts up by one from a multiple of
    # the run: None until a kernel plan asks (``slimq.kernels.triton._perm.perm_run``)
    perm_run: int | None = field(default=None, compare=False, repr=False)
