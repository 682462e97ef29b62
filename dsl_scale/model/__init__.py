from dsl_scale.model.dit import DiT, DiTConfig

__all__ = ["DiT", "DiTConfig"]
