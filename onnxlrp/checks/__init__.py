"""Checks that say whether an explanation can be trusted, computed on the compiled explainer.

conservation   relevance sum and negative share per layer
pixel_flipping selectivity: MoRF/LeRF region perturbation, AOPC, ABPC, random and gradient x input baselines
randomisation  model-parameter randomisation sanity check (cascading / independent)
convergence    cosine-similarity convergence per layer, class sensitivity
continuity     explanation change over input change under shifts and noise
similarity     Spearman, SSIM, cosine
"""
from .conservation import ConservationReport, LayerConservation, conservation
from .continuity import ContinuityResult, continuity
from .convergence import ConvergenceResult, LayerConvergence, convergence
from .pixel_flipping import SelectivityCurves, SelectivityResult, pixel_flipping, selectivity
from .randomisation import RandomisationResult, RandomisationRow, randomisation

__all__ = ["ConservationReport", "LayerConservation", "conservation", "ContinuityResult", "continuity",
           "ConvergenceResult", "LayerConvergence", "convergence", "SelectivityCurves", "SelectivityResult",
           "pixel_flipping", "selectivity", "RandomisationResult", "RandomisationRow", "randomisation"]
