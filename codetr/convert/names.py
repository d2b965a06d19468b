"""Official (Sense-X/Co-DETR, mmdetection 2.x) parameter names <-> this project's, in both directions.

A rule is a pair of templates, ``(official, project)``; ``{leaf}`` matches the rest of a name
(``weight``, ``bias``, ``running_mean``, ...). Rules are generated for one model layout (decoder
depth, which auxiliary head sits at which index), so every template holds concrete indices and
the same list translates either way.

Layout facts the rules encode:

* backbone (ResNet, Swin): see :mod:`codetr.convert.backbone_names`.
* neck (ChannelMapper): ``convs.i.conv`` / ``convs.i.gn`` = ``lateral.i`` / ``lateral_norm.i``,
  ``extra_convs.0.{conv,gn}`` = ``extra`` / ``extra_norm``.
* transformer layers (mmcv BaseTransformerLayer): encoder ``attentions.0`` = ``self_attn``,
  ``norms.k`` = ``norm{k+1}``, ``ffns.0.layers.0.0`` / ``ffns.0.layers.1`` = ``ffn.layers.0`` /
  ``ffn.layers.3``; decoder ``attentions.0.attn`` (torch MultiheadAttention) = ``self_attn``,
  ``attentions.1`` = ``cross_attn``.
* query-head branches: ``cls_branches.i`` / ``reg_branches.i.{0,2,4}`` for decoder layer i; index L
  (= number of decoder layers) is the two-stage pair, the project's ``enc_cls_branch`` /
  ``enc_reg_branch``.
* Co-DINO (``dino``): the decoder's ``ref_point_head.{0,2}`` / ``norm``, the matching queries'
  ``transformer.query_embed`` (the project's ``query_embedding``) and the head's ``label_embedding``;
  no ``pos_trans`` and no per-head position embedding.
* auxiliary heads: the official detector keeps ``rpn_head`` + ``roi_head.0`` (Faster R-CNN) and
  ``bbox_head.0`` (ATSS); its positive-query modules are indexed roi heads first, then bbox heads
  (0 = Faster R-CNN, 1 = ATSS), the project's by ``model.aux_heads``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from codetr.config.schema import BackboneConfig
from codetr.convert.backbone_names import backbone_rules

# official positive-query index of each auxiliary head type (roi heads first, then bbox heads)
OFFICIAL_AUX_ORDER = ("faster_rcnn", "atss")

_FFN = (("ffns.0.layers.0.0", "ffn.layers.0"), ("ffns.0.layers.1", "ffn.layers.3"))


@dataclass(frozen=True)
class Layout:
    """What the name rules depend on."""

    num_encoder_layers: int
    num_decoder_layers: int
    aux_heads: tuple[str, ...]          # the project's order (model.aux_heads)
    with_coord_feat: bool = True
    query_head: str = "deformable_detr"  # or "dino"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)   # model.backbone (type, size, out_indices)

    def official_aux_index(self, name: str) -> int:
        """The official positive-query index of the project's auxiliary head ``name``."""
        present = [h for h in OFFICIAL_AUX_ORDER if h in self.aux_heads]
        return present.index(name)


def _rule_list(layout: Layout) -> list[tuple[str, str]]:
    rules = backbone_rules(layout.backbone)
    for i in range(len(layout.backbone.out_indices)):   # one neck input per backbone output
        rules += [(f"neck.convs.{i}.conv.{{leaf}}", f"neck.lateral.{i}.{{leaf}}"),
                  (f"neck.convs.{i}.gn.{{leaf}}", f"neck.lateral_norm.{i}.{{leaf}}")]
    rules += [("neck.extra_convs.0.conv.{leaf}", "neck.extra.{leaf}"),
              ("neck.extra_convs.0.gn.{leaf}", "neck.extra_norm.{leaf}")]
    t = "query_head.transformer."
    for layer in range(layout.num_encoder_layers):
        o, p = f"{t}encoder.layers.{layer}.", f"query_head.encoder.layers.{layer}."
        rules.append((o + "attentions.0.{leaf}", p + "self_attn.{leaf}"))
        rules += [(f"{o}norms.{k}.{{leaf}}", f"{p}norm{k + 1}.{{leaf}}") for k in range(2)]
        rules += [(f"{o}{a}.{{leaf}}", f"{p}{b}.{{leaf}}") for a, b in _FFN]
    for layer in range(layout.num_decoder_layers):
        o, p = f"{t}decoder.layers.{layer}.", f"query_head.decoder.layers.{layer}."
        rules += [(o + "attentions.0.attn.{leaf}", p + "self_attn.{leaf}"),
                  (o + "attentions.1.{leaf}", p + "cross_attn.{leaf}")]
        rules += [(f"{o}norms.{k}.{{leaf}}", f"{p}norm{k + 1}.{{leaf}}") for k in range(3)]
        rules += [(f"{o}{a}.{{leaf}}", f"{p}{b}.{{leaf}}") for a, b in _FFN]
    rules.append((f"{t}level_embeds", "query_head.level_embeds"))
    dino = layout.query_head == "dino"
    for name in ("enc_output", "enc_output_norm") + (() if dino else ("pos_trans", "pos_trans_norm")):
        rules.append((f"{t}{name}.{{leaf}}", f"query_head.{name}.{{leaf}}"))
    if dino:
        rules += [(f"{t}decoder.ref_point_head.{2 * k}.{{leaf}}", f"query_head.decoder.ref_point_head.layers.{k}.{{leaf}}")
                  for k in range(2)]
        rules += [(f"{t}decoder.norm.{{leaf}}", "query_head.decoder.norm.{leaf}"),
                  (f"{t}query_embed.weight", "query_head.query_embedding.weight"),
                  ("query_head.label_embedding.weight", "query_head.label_embedding.weight")]
    # the positive-query modules: official index -> the project's index of the same head type
    per_head = ["aux_pos_trans", "aux_pos_trans_norm"]
    if layout.with_coord_feat:
        per_head += ["pos_feats_trans", "pos_feats_norm"]
    for p_idx, head in enumerate(layout.aux_heads):
        o_idx = layout.official_aux_index(head)
        rules += [(f"{t}{m}.{o_idx}.{{leaf}}", f"query_head.{m}.{p_idx}.{{leaf}}") for m in per_head]
    if layout.with_coord_feat and layout.aux_heads and not dino:
        rules.append((f"{t}head_pos_embed.weight", "query_head.head_pos_embed.weight"))   # rows permuted
    num_dec = layout.num_decoder_layers
    for i in range(num_dec + 1):
        cls_p = f"query_head.cls_branches.{i}" if i < num_dec else "query_head.enc_cls_branch"
        reg_p = f"query_head.reg_branches.{i}" if i < num_dec else "query_head.enc_reg_branch"
        rules.append((f"query_head.cls_branches.{i}.{{leaf}}", f"{cls_p}.{{leaf}}"))
        rules += [(f"query_head.reg_branches.{i}.{2 * k}.{{leaf}}", f"{reg_p}.layers.{k}.{{leaf}}") for k in range(3)]
    if not dino:
        rules.append(("query_head.query_embedding.{leaf}", "query_head.query_embedding.{leaf}"))
    rules.append(("query_head.downsample.{leaf}", "query_head.downsample.{leaf}"))
    if "faster_rcnn" in layout.aux_heads:
        f = f"aux_heads.{layout.aux_heads.index('faster_rcnn')}."
        rules += [("rpn_head.{leaf}", f + "rpn.{leaf}"),
                  ("roi_head.0.bbox_head.shared_fcs.0.{leaf}", f + "roi_head.fc1.{leaf}"),
                  ("roi_head.0.bbox_head.shared_fcs.1.{leaf}", f + "roi_head.fc2.{leaf}"),
                  ("roi_head.0.bbox_head.fc_cls.{leaf}", f + "roi_head.fc_cls.{leaf}"),
                  ("roi_head.0.bbox_head.fc_reg.{leaf}", f + "roi_head.fc_reg.{leaf}")]
    if "atss" in layout.aux_heads:
        a = f"aux_heads.{layout.aux_heads.index('atss')}."
        for branch in ("cls_convs", "reg_convs"):
            rules += [(f"bbox_head.0.{branch}.{{k}}.conv.{{leaf}}", f"{a}{branch}.{{k}}.0.{{leaf}}"),
                      (f"bbox_head.0.{branch}.{{k}}.gn.{{leaf}}", f"{a}{branch}.{{k}}.1.{{leaf}}")]
        rules += [(f"bbox_head.0.{m}.{{leaf}}", f"{a}{m}.{{leaf}}")
                  for m in ("atss_cls", "atss_reg", "atss_centerness", "scales")]
    return rules


def _compile(template: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()])
        out += r"(?P<k>\d+)" if m.group(1) == "k" else rf"(?P<{m.group(1)}>.+)"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


class NameMap:
    """Translates names between the official and the project layout (``to_project`` / ``to_official``)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.rules = [(_compile(o), o, _compile(p), p) for o, p in _rule_list(layout)]

    def to_project(self, official_name: str) -> str | None:
        for o_re, _, _, p_tpl in self.rules:
            m = o_re.match(official_name)
            if m:
                return p_tpl.format(**m.groupdict())
        return None

    def to_official(self, project_name: str) -> str | None:
        for _, o_tpl, p_re, _ in self.rules:
            m = p_re.match(project_name)
            if m:
                return o_tpl.format(**m.groupdict())
        return None

    def head_rows(self) -> list[int]:
        """For each project head index, the official row of ``head_pos_embed``."""
        return [self.layout.official_aux_index(h) for h in self.layout.aux_heads]
