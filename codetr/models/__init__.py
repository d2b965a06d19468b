"""Co-DETR model parts."""
from codetr.models.build import build_model
from codetr.models.detector import CoDETR

__all__ = ["CoDETR", "build_model"]
