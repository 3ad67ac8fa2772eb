"""Importance scores: reduction-friendly activation statistics, aggregations, a file, and selection.

What is measured (forward only, the full super-network, calibration tokens):

- ``ffn``     the input of ``linear_fc2`` (post-activation FFN neurons), per layer: [L, ffn]
- ``attn``    the input of ``linear_proj`` (per-head context channels, heads group by group): [L, heads*d]
- ``hidden``  the outputs of every norm (input_layernorm, pre_mlp_layernorm, final_layernorm): [h]
- ``layer``   1 - cosine(layer input, layer output) per token, per layer: [L]; optionally the validation
  perplexity increase when the layer alone is dropped: [L]

Per unit we keep three sums that reduce across tokens, batches and data-parallel ranks by addition (or
max): sum |a|, sum a^2, max |a|, plus the token count. Every aggregation is a function of those, so one
calibration pass serves all of them and the choice can be made when a sub-network is selected:

- ``mean``: mean |a| over tokens (Minitron's mean absolute activation)
- ``l2``:   sqrt(sum a^2) over tokens (the L2 aggregation of Minitron's ablations)
- ``rms``:  sqrt(mean a^2)
- ``max``:  max |a|

A head's score aggregates its d channels the same way (mean / l2 / rms / max over the head's channel
statistics); a query group's score is the sum of its heads' scores.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nemo_subnet.files import atomic_write
from nemo_subnet.models.config import ModelConfig
from nemo_subnet.subnet.config import LayerSubnet, SubnetConfig, resolve

FORMAT_VERSION = 1


class Aggregation(str, enum.Enum):
    MEAN = "mean"
    L2 = "l2"
    RMS = "rms"
    MAX = "max"


class LayerMetric(str, enum.Enum):
    COSINE = "cosine"
    """1 - cosine(input, output) averaged over tokens (ShortGPT's block influence)."""
    PERPLEXITY = "perplexity"
    """Validation perplexity increase when the layer alone is dropped."""


STATS = ("sum_abs", "sum_sq", "max_abs")


@dataclass
class ImportanceScores:
    """Activation statistics of one model on calibration data; every score is derived from them."""

    model: dict
    """Shape fields of the scored ModelConfig (num_layers, hidden_size, heads, groups, ffn, kv_channels)."""
    tokens: int
    """Calibration tokens seen (over all data-parallel ranks)."""
    tensors: dict[str, torch.Tensor]
    """``{ffn,attn,hidden}.{sum_abs,sum_sq,max_abs}``, ``hidden.count``, ``layer.cosine``, and when
    measured ``layer.loss`` (loss with the layer dropped) and ``base_loss``."""
    aggregation: Aggregation = Aggregation.L2
    """Default aggregation of the accessors below."""
    meta: dict = field(default_factory=dict)

    # ---- derived scores -------------------------------------------------------------------------
    def _aggregate(self, kind: str, aggregation: Aggregation | None, count: float, group: int = 1) -> torch.Tensor:
        """Per unit score; ``group`` consecutive channels form one unit (a head's d channels)."""
        agg = Aggregation(aggregation or self.aggregation)
        t = {s: self.tensors[f"{kind}.{s}"].double() for s in STATS}
        if group > 1:
            t = {s: v.reshape(*v.shape[:-1], -1, group) for s, v in t.items()}  # [..., units, d]
            t = {"sum_abs": t["sum_abs"].sum(-1), "sum_sq": t["sum_sq"].sum(-1), "max_abs": t["max_abs"].amax(-1)}
        if agg is Aggregation.MEAN:
            return t["sum_abs"] / (count * group)
        if agg is Aggregation.L2:
            return t["sum_sq"].sqrt()
        if agg is Aggregation.RMS:
            return (t["sum_sq"] / (count * group)).sqrt()
        return t["max_abs"]

    def ffn(self, aggregation: Aggregation | None = None) -> torch.Tensor:
        """[L, ffn] neuron scores."""
        return self._aggregate("ffn", aggregation, self.tokens)

    def heads(self, aggregation: Aggregation | None = None) -> torch.Tensor:
        """[L, heads] query-head scores (global head order: group by group)."""
        return self._aggregate("attn", aggregation, self.tokens, group=self.model["kv_channels"])

    def groups(self, aggregation: Aggregation | None = None) -> torch.Tensor:
        """[L, groups]: sum of the group's head scores."""
        heads = self.heads(aggregation)
        return heads.reshape(heads.shape[0], self.model["num_query_groups"], -1).sum(-1)

    def heads_in_group(self, aggregation: Aggregation | None = None) -> torch.Tensor:
        """[L, heads_per_group]: a head position's score summed over groups (positions are shared by all groups)."""
        heads = self.heads(aggregation)
        return heads.reshape(heads.shape[0], self.model["num_query_groups"], -1).sum(1)

    def hidden(self, aggregation: Aggregation | None = None) -> torch.Tensor:
        """[h] channel scores over all norm outputs."""
        return self._aggregate("hidden", aggregation, float(self.tensors["hidden.count"]))

    def layers(self, metric: LayerMetric = LayerMetric.COSINE) -> torch.Tensor:
        """[L] layer scores (higher = more important)."""
        metric = LayerMetric(metric)
        if metric is LayerMetric.COSINE:
            return self.tensors["layer.cosine"].double()
        if "layer.loss" not in self.tensors:
            raise ValueError("these scores have no layer-drop perplexities: make them with `nemo-subnet importance "
                             "--layer-metric perplexity`")
        return self.tensors["layer.loss"].double().exp() - self.tensors["base_loss"].double().exp()

    @property
    def has_layer_drop(self) -> bool:
        return "layer.loss" in self.tensors

    # ---- file -----------------------------------------------------------------------------------
    def check_model(self, cfg: ModelConfig) -> None:
        mine = shape_of(cfg)
        if mine != self.model:
            diff = {k: (self.model.get(k), v) for k, v in mine.items() if self.model.get(k) != v}
            raise ValueError(f"importance scores were computed for another model (scores vs model: {diff})")

    def save(self, path: str | Path) -> Path:
        """One safetensors file (tensors + JSON metadata), written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": str(FORMAT_VERSION), "model": json.dumps(self.model), "tokens": str(self.tokens),
                  "aggregation": self.aggregation.value, "meta": json.dumps(self.meta)}
        with atomic_write(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"importance scores {path} do not exist (make them with `nemo-subnet importance`)")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != str(FORMAT_VERSION):
                raise ValueError(f"{path} is not a nemo-subnet importance file (format {header.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(model=json.loads(header["model"]), tokens=int(header["tokens"]), tensors=tensors,
                   aggregation=Aggregation(header["aggregation"]), meta=json.loads(header.get("meta", "{}")))


def shape_of(cfg: ModelConfig) -> dict:
    return {"num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "num_attention_heads": cfg.num_attention_heads,
            "num_query_groups": cfg.num_query_groups, "ffn_hidden_size": cfg.ffn_hidden_size, "kv_channels": cfg.kv_channels}


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in ascending index order (ties: lower index first)."""
    order = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


def _count(selection, total: int) -> int | list[int]:
    if selection is None:
        return total
    return selection  # int, or an explicit list kept as given


def importance_ordered(cfg: ModelConfig, sizes: SubnetConfig, scores: ImportanceScores, *,
                       layer_metric: LayerMetric = LayerMetric.COSINE,
                       aggregation: Aggregation | None = None) -> SubnetConfig:
    """The sub-network of ``sizes`` (counts) that keeps the most important units of each dimension.

    Counts become index lists (top-k by score); explicit index lists in ``sizes`` are kept as given.
    Layer-wise entries score units of the layer they belong to (the k-th kept layer).
    """
    scores.check_model(cfg)
    resolve(cfg, sizes)  # validates counts against the model first
    hidden = _count(sizes.hidden, cfg.hidden_size)
    hidden = top_k(scores.hidden(aggregation), hidden) if isinstance(hidden, int) else hidden
    layers = _count(sizes.layers, cfg.num_layers)
    layers = top_k(scores.layers(layer_metric), layers) if isinstance(layers, int) else sorted(layers)
    ffn, groups, in_group = scores.ffn(aggregation), scores.groups(aggregation), scores.heads_in_group(aggregation)
    hpg = cfg.num_attention_heads // cfg.num_query_groups

    def one(spec: LayerSubnet, layer: int) -> LayerSubnet:
        pick = lambda sel, total, s: top_k(s[layer], sel) if isinstance(sel, int) else sel  # noqa: E731
        return LayerSubnet(query_groups=pick(_count(spec.query_groups, cfg.num_query_groups), cfg.num_query_groups, groups),
                           heads_per_group=pick(_count(spec.heads_per_group, hpg), hpg, in_group),
                           ffn=pick(_count(spec.ffn, cfg.ffn_hidden_size), cfg.ffn_hidden_size, ffn))

    specs = sizes.layer if isinstance(sizes.layer, list) else [sizes.layer] * len(layers)
    return SubnetConfig(hidden=hidden, layers=layers, layer=[one(spec, layer) for spec, layer in zip(specs, layers)])
