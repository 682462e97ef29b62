"""dsl-scale: masked diffusion language models (MDLM, DSL) at cluster scale."""

__version__ = "0.1.0"
