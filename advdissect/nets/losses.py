"""Losses that pull the features of a clean batch D and its adversarial batch A together.

φ(D) and φ(A) are (n, k) feature matrices, row j of φ(A) being the adversarial example of
row j of φ(D); a conv map (n, C, h, w) is flattened to k = C·h·w. The domain-adaptation terms
follow ATDA (Song et al., "Improving the generalization of adversarial training with domain
adaptation", ICLR 2019), which puts them on the logits; the consistency term is the feature
consistency of Dong et al. ("Towards interpretable deep neural networks by leveraging
adversarial examples", 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(features: torch.Tensor) -> torch.Tensor:
    if features.dim() < 2:
        raise ValueError(f"features need a batch axis and a feature axis, got shape {tuple(features.shape)}")
    return features.reshape(features.shape[0], -1)


def _check_pair(fd: torch.Tensor, fa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fd, fa = _flat(fd), _flat(fa)
    if fd.shape[1] != fa.shape[1]:
        raise ValueError(f"feature sizes differ: {fd.shape[1]} (D) vs {fa.shape[1]} (A)")
    return fd, fa


def covariance(features: torch.Tensor) -> torch.Tensor:
    """Covariance (k, k) of the rows of `features`: C = X_cᵀ·X_c / n, X_c = X − mean(X).

    The 1/n (maximum-likelihood) normalisation, not 1/(n−1): the batch is taken as the whole
    distribution of its domain. D and A always have the same n, so the choice only rescales
    CORAL by a constant.
    """
    x = _flat(features)
    xc = x - x.mean(dim=0, keepdim=True)
    return xc.T @ xc / x.shape[0]


def coral(fd: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
    """CORAL(D, A) = (1/k²)·‖C_D − C_A‖₁ (entrywise L1 norm; C as in `covariance`).

    Blind to a shift of the features (covariances are centred); MMD sees that.
    """
    fd, fa = _check_pair(fd, fa)
    k = fd.shape[1]
    return (covariance(fd) - covariance(fa)).abs().sum() / (k * k)


def mmd(fd: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
    """Linear MMD(D, A) = (1/k)·‖mean φ(D) − mean φ(A)‖₁ (means over the batch)."""
    fd, fa = _check_pair(fd, fa)
    return (fd.mean(dim=0) - fa.mean(dim=0)).abs().sum() / fd.shape[1]


def consistency(fd: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖φ(x_j) − φ(x_j^adv)‖₂² (pairs matched by row)."""
    fd, fa = _check_pair(fd, fa)
    if fd.shape[0] != fa.shape[0]:
        raise ValueError(f"consistency pairs rows: batch sizes differ ({fd.shape[0]} vs {fa.shape[0]})")
    return ((fd - fa) ** 2).sum(dim=1).mean()


def margin_loss(fd: torch.Tensor, fa: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ATDA's supervised margin term on class-conditional centres, with batch centres.

    Every sample j of D ∪ A (an adversarial example carries the label of its clean source)
    is compared with the centre of its own class and with the centre of every other class
    present in the batch:

        L = 1 / (2n·(m−1)) · Σ_j Σ_{c ≠ y_j} softplus(‖φ_j − μ_{y_j}‖₁ − ‖φ_j − μ_c‖₁)

    where μ_c is the mean of φ over the samples of class c in D ∪ A, and m is the number of
    classes in the batch. ATDA keeps running centres of every class; here the centres are the
    batch's own and act as fixed targets (detached), as the centres of a centre loss do. Zero
    when fewer than two classes are in the batch.
    """
    fd, fa = _check_pair(fd, fa)
    feats = torch.cat([fd, fa])
    y = torch.cat([labels, labels]).to(feats.device)
    classes = torch.unique(y)
    m = classes.numel()
    if m < 2:
        return feats.sum() * 0.0
    onehot = (y[:, None] == classes[None, :]).to(feats.dtype)  # (2n, m)
    centres = (onehot.T @ feats.detach()) / onehot.sum(dim=0)[:, None]  # (m, k)
    dist = torch.cdist(feats, centres, p=1)  # (2n, m) L1 distances
    own = (dist * onehot).sum(dim=1, keepdim=True)
    terms = F.softplus(own - dist) * (1.0 - onehot)
    return terms.sum() / (feats.shape[0] * (m - 1))
