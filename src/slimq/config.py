"""Typed, frozen, versioned configuration for every quantization method.

Each config validates itself on construction and round-trips through JSON via
``to_dict`` / ``from_dict``. Every default lives here and nowhere else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONFIG_VERSION",
    "ConfigError",
    "CalibConfig",
    "GPTQOptions",
    "SlimOptions",
    "QuantConfig",
    "METHOD_NAMES",
]

CONFIG_VERSION = 1
METHOD_NAMES = ("rtn", "gptq", "slim")


class ConfigError(ValueError):
    """A configuration value violates a documented constraint."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class CalibConfig:
    """Calibration data: a dataset name (wikitext2, ptb, c4) or a local file path."""

    dataset: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.dataset), "calib dataset must be a non-empty name or path")
        _check(self.nsamples >= 1, f"nsamples must be >= 1, got {self.nsamples}")
        _check(self.seqlen >= 2, f"seqlen must be >= 2, got {self.seqlen}")


@dataclass(frozen=True)
class GPTQOptions:
    """GPTQ solver options (Frantar et al., 2022)."""

    percdamp: float = 0.01
    blocksize: int = 128
    act_order: bool = False
    static_groups: bool = False
    true_sequential: bool = True

    def __post_init__(self) -> None:
        _check(0.0 < self.percdamp < 1.0, f"percdamp must lie in (0, 1), got {self.percdamp}")
        _check(self.blocksize >= 1, f"blocksize must be >= 1, got {self.blocksize}")


@dataclass(frozen=True)
class SlimOptions:
    """SliM-LLM options: Salience-Determined Bit Allocation (SBA) and
    Salience-Weighted Quantizer Calibration (SQC)."""

    sba: bool = True
    sqc: bool = True
    # SQC: salient elements (z-score of element salience above `sqc_threshold`)
    # get weight `sqc_lambda` in the range-search error (lambda = 1: plain MSE range search).
    # Default (2, 2) chosen on whole-model perplexity, which overrules the layer proxy:
    # benchmarks/sqc_sweep.py (held-out output error of 12 SmolLM2 linears) favours lambda = 1
    # by <= 0.9% on average, but larger lambda protects layer 2's down_proj (massive
    # activations) and there SmolLM2-135M perplexity with (2, 2) is far lower: WikiText-2
    # 2434 vs 6524 at 2 bits and 46.8 vs 55.8 at 3 bits (g128, benchmarks/accuracy.py, CPU
    # protocol in README), PTB and C4 alike.
    sqc_lambda: float = 2.0
    sqc_threshold: float = 2.0
    sqc_grid: tuple[float, float, int] = (0.9, 1.1, 101)  # (low, high, points) of the range scale p
    # "coarse_fine" (every 4th grid point, then the best one's neighbours: a third of the
    # work, same choice in ~99% of rows) or "exhaustive" (every point, as the authors).
    sqc_search: str = "coarse_fine"
    # SBA: which bit-widths groups may take, relative to N = floor(bits): a contiguous
    # run of integers containing 0, e.g. (-1, 0, 1) (paper) or (-1, 0, 1, 2).
    palette: tuple[int, ...] = (-1, 0, 1)
    # SBA candidate scoring: "rtn" (authors' code) or "gptq" (output KL after GPTQ
    # compensation, on the `gptq_shortlist` best RTN-scored allocations; one GPTQ run each).
    score: str = "rtn"
    gptq_shortlist: int = 3
    allocation_file: str | None = None  # reuse a saved allocation instead of searching

    def __post_init__(self) -> None:
        _check(self.sqc_lambda >= 1.0, f"sqc_lambda must be >= 1, got {self.sqc_lambda}")
        lo, hi, n = self.sqc_grid
        _check(0 < lo <= hi and int(n) >= 1, f"sqc_grid must be (low>0, high>=low, points>=1), got {self.sqc_grid}")
        _check(self.sqc_search in ("coarse_fine", "exhaustive"),
               f"sqc_search must be 'coarse_fine' or 'exhaustive', got {self.sqc_search!r}")
        _check(0 in self.palette, f"palette must contain 0 (the target width), got {self.palette}")
        pal = sorted(self.palette)
        _check(all(isinstance(o, int) and not isinstance(o, bool) for o in pal)
               and pal == list(range(pal[0], pal[-1] + 1)) and -7 <= pal[0] and pal[-1] <= 7,
               f"palette must be distinct contiguous integers in -7..7, e.g. (-1, 0, 1), got {self.palette}")
        _check(self.gptq_shortlist >= 1, f"gptq_shortlist must be >= 1, got {self.gptq_shortlist}")
        _check(self.score in ("rtn", "gptq"), f"score must be 'rtn' or 'gptq', got {self.score!r}")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how. ``bits`` is the (average) weight bit-width."""

    method: str = "gptq"
    bits: float = 4
    group_size: int = 128
    sym: bool = False
    calib: CalibConfig = field(default_factory=CalibConfig)
    gptq: GPTQOptions = field(default_factory=GPTQOptions)
    slim: SlimOptions = field(default_factory=SlimOptions)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        _check(self.method in METHOD_NAMES, f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        _check(1 <= self.bits <= 8, f"bits must lie in 1..8, got {self.bits}")
        if self.method != "slim":
            _check(float(self.bits).is_integer(), f"method {self.method} needs integer bits, got {self.bits}")
        _check(self.group_size == -1 or self.group_size >= 1,
               f"group_size must be -1 (per channel) or >= 1, got {self.group_size}")
        _check(self.version == CONFIG_VERSION,
               f"config version {self.version} is not supported (this slimq reads version {CONFIG_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        _check(not unknown, f"unknown quantization config keys: {sorted(unknown)}")
        sub = {"calib": CalibConfig, "gptq": GPTQOptions, "slim": SlimOptions}
        for key, typ in sub.items():
            if key in d and isinstance(d[key], dict):
                vals = dict(d[key])
                for f in dataclasses.fields(typ):
                    if f.name in vals and isinstance(vals[f.name], list):
                        vals[f.name] = tuple(vals[f.name])
                d[key] = typ(**vals)
        return cls(**d)
