"""Co-DETR as a plain PyTorch detection library (no Ray, no MLflow).

    from codetr import load_config, build_model
    cfg = load_config("experiments/codetr_tiny.yaml", overrides=["model.lambda1=0.5"])
    model = build_model(cfg)
"""
from codetr.config import Config, ConfigError, load_config


def build_model(cfg: Config, num_classes: int | None = None):
    """Build the Co-DETR detector of ``cfg.model`` (``num_classes`` overrides a null config value)."""
    from codetr.models.build import build_model as _build

    return _build(cfg, num_classes=num_classes)


__all__ = ["Config", "ConfigError", "load_config", "build_model"]
