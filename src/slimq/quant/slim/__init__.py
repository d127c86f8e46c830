"""SliM-LLM (Huang et al., 2024, "SliM-LLM: Salience-Driven Mixed-Precision
Quantization for Large Language Models", arXiv 2405.14917).

* ``salience``: element and group salience ``w^2 / U_jj^2`` from the layer Hessian;
* ``allocation``: Salience-Determined Bit Allocation (SBA), budget-exact;
* ``sqc``: Salience-Weighted Quantizer Calibration as a ``QParamFitter``;
* ``slim``: ``slim_quantize``, the per-linear entry point (SBA + GPTQ with SQC);
* ``io``: allocation files (JSON).

Not done yet (TODO): allocation *across* the linears of a decoder block (trading
bits between, say, ``q_proj`` and ``down_proj``); every linear meets the target on
its own.
"""
from slimq.quant.slim.allocation import SBAResult, plan_budget, sba_search
from slimq.quant.slim.io import AllocationFileError, load_allocation, save_allocation
from slimq.quant.slim.salience import element_salience, group_salience
from slimq.quant.slim.slim import slim_quantize, validate_allocation
from slimq.quant.slim.sqc import make_sqc_fitter

__all__ = [
    "slim_quantize",
    "validate_allocation",
    "element_salience",
    "group_salience",
    "plan_budget",
    "sba_search",
    "SBAResult",
    "make_sqc_fitter",
    "save_allocation",
    "load_allocation",
    "AllocationFileError",
]
