"""The result of quantizing one linear layer: integer codes plus their quantizers.

This is the hand-off between the algorithms (rtn, gptq, slim, ...) and the
packed checkpoint format, so packing never re-quantizes anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["QuantizedTensor"]


@dataclass
class QuantizedTensor:
    """A weight ``W [N, K]`` (out_features x in_features) in quantized form.

    Attributes:
        codes:  uint8 ``[N, K]``, original column order; code ``q`` of a b-bit
                element lies in ``[0, 2**b - 1]``.
        scales: float16 ``[N, G]``, one per output row and group.
        zeros:  float16 ``[N, G]``, zero point in code units (may be fractional,
                e.g. for 1-bit binarisation), so ``w = (q - zero) * scale``.
        g_idx:  int32 ``[K]``, the group of each input column (GPTQ's g_idx);
                with act-order the groups are contiguous in activation order,
                not in column order.
        bits:   int8 ``[N, G]``, the bit-width of each (row, group) quantizer.
                SliM-LLM varies it along groups, MixLLM along rows.
        group_size: columns per group (-1: one group spanning all columns).
        info:   free-form diagnostics (layer loss, time, ...), not stored in
                checkpoints' tensors.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    g_idx: torch.Tensor
    bits: torch.Tensor
    group_size: int
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        g = self.scales.shape[1]
        if self.scales.shape != (n, g) or self.zeros.shape != (n, g) or self.bits.shape != (n, g):
            raise ValueError(
                f"scales {tuple(self.scales.shape)}, zeros {tuple(self.zeros.shape)} and bits "
                f"{tuple(self.bits.shape)} must all be [N={n}, G]"
            )
        if self.g_idx.shape != (k,):
            raise ValueError(f"g_idx must be [K={k}], got {tuple(self.g_idx.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W_hat [N, K]`` = ``(codes - zeros[:, g_idx]) * scales[:, g_idx]``, computed in float32."""
        gi = self.g_idx.long()
        s = self.scales.float()[:, gi]
        z = self.zeros.float()[:, gi]
        return ((self.codes.float() - z) * s).to(dtype)

    def group_bits(self) -> torch.Tensor:
        """int8 ``[G]`` bit-width of each column group; raises if it varies along rows."""
        if not bool((self.bits == self.bits[:1]).all()):
            raise ValueError("bit-widths vary along rows; use .bits")
        return self.bits[0].clone()

    def group_cols(self) -> torch.Tensor:
        """int64 ``[G]`` number of columns in each group (a short last group counts what it holds)."""
        return torch.bincount(self.g_idx.long(), minlength=self.n_groups)

    def avg_bits(self) -> float:
        """Mean weight bit-width, weighting each (row, group) by its column count."""
        counts = self.group_cols().float()
        return float((self.bits.float() * counts).sum() / (counts.sum() * self.shape[0]))

    def to(self, device: torch.device | str) -> "QuantizedTensor":
        return QuantizedTensor(
            self.codes.to(device), self.scales.to(device), self.zeros.to(device),
            self.g_idx.to(device), self.bits.to(device), self.group_size, dict(self.info),
        )
