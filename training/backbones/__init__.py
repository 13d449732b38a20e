"""Registry of backbones: adding one is one module plus one line here."""

from __future__ import annotations

import importlib

from training.backbones.base import Backbone, BackboneConfig

# name -> "module:Class"; imported lazily so the CLI starts fast and one broken model breaks only itself.
REGISTRY: dict[str, str] = {
    "pop": "training.backbones.popularity:Popularity",
    "mf": "training.backbones.mf:MF",
    "lightgcn": "training.backbones.lightgcn:LightGCN",
    "sgl": "training.backbones.sgl:SGL",
    "sasrec": "training.backbones.sasrec:SASRec",
    "sasrec_lm": "training.backbones.sasrec_lm:SASRecLM",
    "sasrec_lm_shuffled": "training.backbones.sasrec_lm:SASRecLMShuffled",
    "bert4rec": "training.backbones.bert4rec:BERT4Rec",
    "cl4srec": "training.backbones.cl4srec:CL4SRec",
}


def get_backbone(name: str) -> type[Backbone]:
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; choose one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["Backbone", "BackboneConfig", "REGISTRY", "get_backbone"]
