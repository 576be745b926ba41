"""GENet: "Group Ensemble: Learning an Ensemble of ConvNets in a single ConvNet"
(Hao Chen, Abhinav Shrivastava; arXiv 2007.00649, 2020).

Official repository: **none found** (TSTB-dev/Group-Ensemble is self-declared unofficial and
groups a whole ResNet; it was not followed).  This file follows the paper as far as its
abstract and secondary descriptions go ([P]/[U] in docs/modules.md section 7):

* shared base + multi-head: the late part of the network is split into G groups by group
  convolution; each group is one ensemble member with its own classifier, "retaining the same
  computation as a single ConvNet";
* Group Averaging: each member is trained on its own loss, equally weighted; at test time the
  members' predictions are averaged.

``GENetHead`` (registered as the head ``genet``; ``genet_head`` builds it):
    x (shared features, C_in) -> branch: 1x1 conv C_in->C, BN, ReLU6   [if mid_channels]
    -> depth x (1x1 conv C->C with groups=G, BN, ReLU6)   (group-preserving late layers)
    -> global average pool -> dropout -> G linear classifiers, classifier g reads group g's
       C/G channels only (one 1x1 conv with groups=G)
    -> output log(mean_g softmax(z_g)) (computed as logsumexp_g log_softmax(z_g) - log G)
The branch conv is where the members separate: member g owns output channels
[g*C/G, (g+1)*C/G) of it, i.e. G convs C_in->C/G that all read the shared features, which is
exactly one dense conv; from there on nothing mixes groups (BN is per channel, so per group).
With depth=0 (the mobile space's default) the head costs what the single head of the same
width costs (``ClassifierHead``, the ``plain`` head): the same branch conv and C*K classifier
MACs, plus (G-1)*K classifier biases and 2*G*K FLOPs for log_softmax/logsumexp.

Choices made where the paper could not be read (all [U]):
  * predictions are averaged as probabilities (the usual model-ensemble average); the head
    returns their log so that argmax / cross-entropy work on it as on logits;
  * Group Averaging trains the members with equally weighted per-member cross-entropy:
    ``genet_loss(model, target)`` (or ``head.group_losses(target)``) gives it from the last
    forward.  A trainer that only applies cross-entropy to the output trains the ensemble's
    averaged prediction instead; the search trainer must call ``genet_loss`` to get the
    paper's objective;
  * Group Wagging (random per-iteration member weights) and Group Boosting (weights from how
    badly the previous member did, with a temperature) are **not implemented**: their exact
    weighting is not verified.  ``group_losses`` returns the per-member losses a caller
    needs to weight them.

Layers are initialised as MobileNetV2's (``mobile_init``); the classifiers as its linear layer.

``HEADS`` is the small registry of classification heads the mobile space offers (a macro
option, not an edge op): ``plain`` (MobileNetV2/MobileNeXt's head) and ``genet``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import HEADS
from .common import conv1x1_bn_act, mobile_init



class ClassifierHead(nn.Module):
    """MobileNetV2's head: [1x1 conv C_in->mid, BN, ReLU6] -> GAP -> dropout -> linear.

    ``mid_channels=0`` drops the 1x1 conv (MobileNeXt: its last block already gives 1280)."""

    def __init__(self, C_in: int, num_classes: int, mid_channels: int = 0, dropout: float = 0.2):
        super().__init__()
        self.conv = conv1x1_bn_act(C_in, mid_channels) if mid_channels else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(mid_channels or C_in, num_classes)
        mobile_init(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1)
        return self.classifier(self.dropout(x))


class GENetHead(nn.Module):
    """G-member group-ensemble head (see the module docstring)."""

    def __init__(self, C_in: int, num_classes: int, mid_channels: int = 0, groups: int = 4,
                 depth: int = 0, dropout: float = 0.2):
        super().__init__()
        C = mid_channels or C_in
        if groups < 1 or C % groups:
            raise ValueError(f"GENet needs the head width ({C}) divisible by the groups ({groups})")
        self.groups, self.num_classes = groups, num_classes
        self.branch = conv1x1_bn_act(C_in, mid_channels) if mid_channels else nn.Identity()
        self.late = nn.Sequential(*(conv1x1_bn_act(C, C, groups) for _ in range(depth)))
        self.dropout = nn.Dropout(dropout)
        self.classifiers = nn.Conv2d(C, groups * num_classes, 1, groups=groups)
        nn.init.normal_(self.classifiers.weight, 0, 0.01)  # linear classifiers, initialised as such
        nn.init.zeros_(self.classifiers.bias)
        self.group_logits: Optional[torch.Tensor] = None  # (B, G, K) of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(self.late(self.branch(x)), 1)
        z = self.classifiers(self.dropout(h)).reshape(x.shape[0], self.groups, self.num_classes)
        # kept for the training loss only: an eval forward (scoring, testing) must leave nothing
        # behind for a later step, where this head may be off the sampled path
        self.group_logits = z if self.training else None
        # log of the averaged probabilities, stable for confident members
        return torch.logsumexp(F.log_softmax(z, dim=-1), dim=1) - math.log(self.groups)

    def group_losses(self, target: torch.Tensor) -> torch.Tensor:
        """Per-member cross-entropy of the last forward, shape (G,)."""
        if self.group_logits is None:
            raise RuntimeError("group_losses needs a forward first")
        z = self.group_logits
        return torch.stack([F.cross_entropy(z[:, g], target) for g in range(self.groups)])

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        """Group Averaging: the members' losses, equally weighted."""
        return self.group_losses(target).mean()

    def task_loss(self, target: torch.Tensor) -> Optional[torch.Tensor]:
        """The training objective hook (``space.ops.task_loss``): consumes the last forward, so a
        head that did not run in this step (an inactive supernet path) contributes nothing."""
        if self.group_logits is None:
            return None
        loss = self.loss(target)
        self.group_logits = None
        return loss


def genet_loss(model: nn.Module, target: torch.Tensor) -> Optional[torch.Tensor]:
    """Group Averaging loss of every GENet head in ``model`` after a forward (None if none)."""
    losses = [m.loss(target) for m in model.modules()
              if isinstance(m, GENetHead) and m.group_logits is not None]
    return torch.stack(losses).sum() if losses else None


def genet_head(C_in: int, num_classes: int, mid_channels: int = 0, groups: int = 4, depth: int = 0,
               dropout: float = 0.2) -> GENetHead:
    """The GENet head as a macro option: G members after the shared base (see module doc)."""
    return GENetHead(C_in, num_classes, mid_channels, groups, depth, dropout)


HEADS.register("plain", ClassifierHead, tags={"mobilenetv2"})
HEADS.register("genet", genet_head, tags={"genet"})
HEADS.alias("genet_head", "genet")  # the name issue 4 gives it; archs store "genet"
