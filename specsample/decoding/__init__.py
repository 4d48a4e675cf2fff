"""Autoregressive and speculative decoding. Public API: LM, Sampling, generate."""

from specsample.decoding.api import LM, GenerateOutput, generate
from specsample.decoding.sampling import Sampling

__all__ = ["LM", "GenerateOutput", "Sampling", "generate"]
