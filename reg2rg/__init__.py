"""Reg2RG: region-guided LLM chest CT report generation."""
__version__ = "0.1.0"
