"""Evaluation: perplexity (and, elsewhere in this package, reports and plots)."""
from slimq.eval.perplexity import DEFAULT_EVAL_SEQLEN, PPLResult, evaluate_ppl, perplexity

__all__ = ["DEFAULT_EVAL_SEQLEN", "PPLResult", "evaluate_ppl", "perplexity"]
