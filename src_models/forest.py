"""Tree ensembles as plain torch modules (no I/O), so a fitted forest travels in a safetensors
model file like every network here and loads without unpickling anything.

The forests are fitted with scikit-learn (``RandomForestClassifier``); :meth:`TreeEnsemble.
from_sklearn` copies each tree's arrays (children, split feature, threshold, leaf class
fractions) into buffers, and :meth:`TreeEnsemble.forward` walks them for a batch at once. It
reproduces ``predict_proba`` of the fitted forest (tested): inputs are compared in float32 with
float64 thresholds, as scikit-learn does.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn


class TreeEnsemble(nn.Module):
    """``n_trees`` binary trees padded to ``max_nodes``; leaves have ``left == -1``."""

    def __init__(self, n_trees: int, max_nodes: int, n_classes: int, max_depth: int):
        super().__init__()
        self.max_depth = int(max_depth)
        self.register_buffer("left", torch.full((n_trees, max_nodes), -1, dtype=torch.int64))
        self.register_buffer("right", torch.full((n_trees, max_nodes), -1, dtype=torch.int64))
        self.register_buffer("feature", torch.zeros(n_trees, max_nodes, dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros(n_trees, max_nodes, dtype=torch.float64))
        self.register_buffer("value", torch.zeros(n_trees, max_nodes, n_classes,
                                                  dtype=torch.float32))

    @staticmethod
    def shape_of(forest) -> Dict[str, int]:
        """Constructor kwargs that fit a fitted scikit-learn forest."""
        trees = [e.tree_ for e in forest.estimators_]
        return {"n_trees": len(trees), "max_nodes": max(t.node_count for t in trees),
                "n_classes": int(trees[0].value.shape[-1]),
                "max_depth": max(int(t.max_depth) for t in trees)}

    def load_sklearn(self, forest) -> "TreeEnsemble":
        """Copy a fitted ``RandomForestClassifier`` (or ``ExtraTreesClassifier``) in place."""
        with torch.no_grad():
            for i, est in enumerate(forest.estimators_):
                t = est.tree_
                n = t.node_count
                self.left[i, :n] = torch.from_numpy(t.children_left.astype("int64"))
                self.right[i, :n] = torch.from_numpy(t.children_right.astype("int64"))
                self.feature[i, :n] = torch.from_numpy(t.feature.astype("int64")).clamp(min=0)
                self.threshold[i, :n] = torch.from_numpy(t.threshold.astype("float64"))
                v = torch.from_numpy(t.value[:, 0, :].astype("float64"))
                self.value[i, :n] = (v / v.sum(-1, keepdim=True).clamp(min=1e-12)).float()
        return self

    def forward(self, x: torch.Tensor, per_tree: bool = False) -> torch.Tensor:
        """(B, F) features (no NaN) -> (B, C) class probabilities (mean over trees), or
        (T, B, C) with ``per_tree``."""
        x = x.to(torch.float32).to(torch.float64)
        n_trees = self.left.shape[0]
        b = x.shape[0]
        node = torch.zeros(n_trees, b, dtype=torch.int64, device=x.device)
        rows = torch.arange(b, device=x.device).expand(n_trees, b)
        for _ in range(self.max_depth + 1):
            left = torch.gather(self.left, 1, node)
            leaf = left < 0
            if bool(leaf.all()):
                break
            feat = torch.gather(self.feature, 1, node)
            thr = torch.gather(self.threshold, 1, node)
            go_left = x[rows, feat] <= thr
            nxt = torch.where(go_left, left, torch.gather(self.right, 1, node))
            node = torch.where(leaf, node, nxt)
        probs = self.value[torch.arange(n_trees, device=x.device)[:, None], node]   # (T, B, C)
        return probs if per_tree else probs.mean(0)


class RadiomicsForests(nn.Module):
    """One forest per task over a fixed feature vector; missing features (NaN) are replaced by
    the training medians stored with the model. Optionally an OS risk: a Cox linear predictor
    over (age, logit of the ``risk_task`` forest's probability), set with :meth:`set_cox`."""

    def __init__(self, n_features: int, tasks: Dict[str, Dict[str, int]], age_index: int = -1,
                 risk_task: str = "idh"):
        super().__init__()
        self.tasks = list(tasks)
        self.age_index, self.risk_task = int(age_index), risk_task
        self.register_buffer("medians", torch.zeros(n_features, dtype=torch.float64))
        self.forests = nn.ModuleDict({t: TreeEnsemble(**kw) for t, kw in tasks.items()})
        self.register_buffer("cox_beta", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("cox_mean", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("has_cox", torch.zeros((), dtype=torch.bool))

    def set_cox(self, beta, mean) -> None:
        with torch.no_grad():
            self.cox_beta.copy_(torch.as_tensor(beta, dtype=torch.float64))
            self.cox_mean.copy_(torch.as_tensor(mean, dtype=torch.float64))
            self.has_cox.fill_(True)

    def impute(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        return torch.where(torch.isnan(x), self.medians.expand_as(x), x)

    def forward(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        """(B, F) -> ``{"probs": {task: (1, B, C)}, "tree_probs": {task: (T, B, C)}}`` and
        ``"risk"`` (B,) when a Cox model is set."""
        raw = x.to(torch.float64)
        xi = self.impute(raw)
        per_tree = {t: self.forests[t](xi, per_tree=True) for t in self.tasks}
        out = {"probs": {t: p.mean(0)[None] for t, p in per_tree.items()},
               "tree_probs": per_tree}
        if bool(self.has_cox) and self.risk_task in per_tree:
            age = raw[:, self.age_index]
            age = torch.where(torch.isnan(age), self.cox_mean[0].expand_as(age), age)
            p = per_tree[self.risk_task].mean(0)[:, 1].clamp(1e-3, 1 - 1e-3)
            z = torch.stack([age, torch.log(p / (1 - p))], 1) - self.cox_mean
            out["risk"] = z @ self.cox_beta
        return out


def radiomics_forests(n_features: int, tasks: Dict[str, Dict[str, int]], age_index: int = -1,
                      risk_task: str = "idh") -> RadiomicsForests:
    """Builder named in model cards (``src_models.forest:radiomics_forests``)."""
    return RadiomicsForests(n_features, tasks, age_index=age_index, risk_task=risk_task)


__all__ = ["TreeEnsemble", "RadiomicsForests", "radiomics_forests"]
