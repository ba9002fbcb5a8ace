"""Small building blocks shared by the backbone and the detector."""
from .shape_spec import ShapeSpec

__all__ = ["ShapeSpec"]
