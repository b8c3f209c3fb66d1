"""Checks that say whether an explanation can be trusted, computed on the compiled explainer."""
from .conservation import ConservationReport, LayerConservation, conservation

__all__ = ["ConservationReport", "LayerConservation", "conservation"]
