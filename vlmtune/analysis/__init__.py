"""DoRA's weight decomposition analysis (Liu et al., ICML 2024, §3.2, eqs. 2-4, Figure 2)."""

from vlmtune.analysis.decompose import Fit, decomposition_change, fit_line
from vlmtune.analysis.weights import finetuned_weights

__all__ = ["Fit", "decomposition_change", "finetuned_weights", "fit_line"]
