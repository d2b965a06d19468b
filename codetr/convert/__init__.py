"""Checkpoint conversion between the official Co-DETR (mmdetection 2.x) layout and this project's."""
from codetr.convert.names import Layout, NameMap
from codetr.convert.official import (COCO_CLASSES, ConversionError, ConversionReport, class_names,
                                     config_for_official, from_official, infer_overrides, layout_of, to_official)
from codetr.convert.safe_load import UnsafeCheckpointError, load_untrusted

__all__ = ["COCO_CLASSES", "ConversionError", "ConversionReport", "Layout", "NameMap", "UnsafeCheckpointError",
           "class_names", "config_for_official", "from_official", "infer_overrides", "layout_of", "load_untrusted",
           "to_official"]
