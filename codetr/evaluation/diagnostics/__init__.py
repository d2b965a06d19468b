"""What an evaluation tells about Co-DETR beyond AP (the paper's measurements), on a fixed val subset.

* :mod:`.encoder`: encoder discriminability, the IoF-IoB curve (paper Sec. 3.4, Eq. 7, Fig. 2);
* :mod:`.instability`: matching instability of the last decoder layer between evaluations (Fig. 5);
* :mod:`.errors`: the COCO error breakdown (classification, localisation, duplicates, background, missed).
"""
from codetr.evaluation.diagnostics.encoder import (EncoderDiscriminability, curve_area, discriminability_map,
                                                   foreground_mask, iof_iob)
from codetr.evaluation.diagnostics.instability import MatchHistory, MatchingInstability, changed_matches

__all__ = ["EncoderDiscriminability", "MatchHistory", "MatchingInstability", "changed_matches", "curve_area",
           "discriminability_map", "foreground_mask", "iof_iob"]
