"""Centred kernel alignment (CKA) between teacher and student representations, and activation capture.

CKA compares two sets of features of the same N examples, ``X (N, D_x)`` and ``Y (N, D_y)``; widths may
differ. Three estimators:

* ``linear_cka`` — Kornblith et al., "Similarity of Neural Network Representations Revisited" (ICML 2019),
  feature-space form on column-centred features: ``||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F)``.
* ``unbiased_linear_cka`` — the same with the unbiased HSIC estimator of Song et al. (JMLR 2012), as used by
  Nguyen et al. (ICLR 2021); it corrects the upward bias of linear CKA when D is large compared with N.
* ``rbf_cka`` — Gaussian kernels with bandwidth ``sigma_frac * median pairwise distance`` (Kornblith's
  notebook, ``gram_rbf(x, threshold)``).

Token maps are pooled to one vector per example before CKA (``pool_tokens``: mean over valid tokens), so a
layer of shape (B, T, D) becomes (B, D). This makes layers with different sequence lengths (Swin stages,
decoder positions) comparable and keeps the Gram matrices N×N; it measures similarity of whole-example
representations, not of per-token ones.

The "global CKA index" of the report is ``global_cka``: the mean linear CKA over the mapped
(teacher layer, student layer) pairs, i.e. the student layers initialised from or distilled to a teacher
layer. All math is done in float64; inputs may be numpy arrays or torch tensors (on any device) and the
results are Python floats. Degenerate inputs (a constant feature set, fewer than 4 examples for the unbiased
estimator) give 0.0 rather than NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ArrayLike = Tensor | np.ndarray
CKAFn = Callable[[ArrayLike, ArrayLike], float]


def _as_matrix(x: ArrayLike, name: str) -> Tensor:
    """(N, D) float64 tensor; a clear error for token maps that were not pooled first."""
    t = torch.as_tensor(x).detach()
    if t.device.type == "mps":  # MPS has no float64
        t = t.cpu()
    t = t.to(torch.float64)
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be (N, D), got shape {tuple(t.shape)}; pool token maps with pool_tokens"
        )
    return t


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[Tensor, Tensor]:
    X, Y = _as_matrix(x, "X"), _as_matrix(y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must hold the same examples, got N={X.shape[0]} and N={Y.shape[0]}")
    return X, Y.to(X.device)


def _ratio(num: Tensor, den: Tensor) -> float:
    den_f = float(den)
    return float(num) / den_f if den_f > 0 else 0.0


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA of Kornblith et al. (2019) on column-centred features.

    Example: ``np.random.seed(1337); X = np.random.randn(100, 10); Y = np.random.randn(100, 10) + X``
    → ``linear_cka(X, Y)`` ≈ 0.55761; ``linear_cka(X, X)`` = 1.0.
    """
    X, Y = _pair(x, y)
    X = X - X.mean(dim=0, keepdim=True)  # (N, Dx)
    Y = Y - Y.mean(dim=0, keepdim=True)  # (N, Dy)
    cross = torch.linalg.matrix_norm(Y.T @ X) ** 2  # ||YᵀX||²_F
    return _ratio(cross, torch.linalg.matrix_norm(X.T @ X) * torch.linalg.matrix_norm(Y.T @ Y))


def _unbiased_hsic(K: Tensor, L: Tensor) -> Tensor:
    """Song et al. (2012) unbiased HSIC of two N×N Gram matrices (N > 3), without its 1/(N(N-3)) factor."""
    n = K.shape[0]
    K = K - torch.diag(torch.diagonal(K))  # zero the diagonals
    L = L - torch.diag(torch.diagonal(L))
    ones = torch.ones(n, dtype=K.dtype, device=K.device)
    KL1 = K @ (L @ ones)  # (N,)
    return (
        (K * L).sum()  # tr(K̃ L̃) for symmetric matrices
        + K.sum() * L.sum() / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (ones @ KL1)
    )


def unbiased_linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA with the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021).

    ``HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))`` with ``K = XXᵀ``, ``L = YYᵀ``. Close to 0 for
    independent features even when D ≫ N (where ``linear_cka`` is biased upwards); can be slightly negative.
    Needs N ≥ 4 examples; returns 0.0 for fewer.
    """
    X, Y = _pair(x, y)
    if X.shape[0] < 4:
        return 0.0
    K, L = X @ X.T, Y @ Y.T  # (N, N)
    den = torch.sqrt(torch.clamp(_unbiased_hsic(K, K) * _unbiased_hsic(L, L), min=0.0))
    return _ratio(_unbiased_hsic(K, L), den)


def _rbf_gram(X: Tensor, sigma_frac: float) -> Tensor | None:
    """exp(-d²/(2 σ² median(d²))) with the median over all N² squared distances (diagonal included)."""
    sq_norms = (X * X).sum(dim=1)  # (N,)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (X @ X.T)).clamp(min=0.0)  # (N, N)
    flat = sq_dist.flatten().sort().values
    mid = flat.numel() // 2
    median = float(flat[mid]) if flat.numel() % 2 else float((flat[mid - 1] + flat[mid]) / 2)  # as np.median
    if median <= 0:
        return None
    return torch.exp(-sq_dist / (2.0 * sigma_frac**2 * median))


def _centre_gram(K: Tensor) -> Tensor:
    """H K H with H = I - 11ᵀ/N."""
    K = K - K.mean(dim=0, keepdim=True)
    return K - K.mean(dim=1, keepdim=True)


def rbf_cka(x: ArrayLike, y: ArrayLike, sigma_frac: float = 0.8) -> float:
    """CKA with Gaussian (RBF) kernels, bandwidth ``sigma_frac`` × the median pairwise distance.

    ``<HKH, HLH>_F / (||HKH||_F ||HLH||_F)``. Returns 0.0 when half or more of the pairwise distances are 0
    (the median bandwidth is then undefined). ``rbf_cka(X, X)`` = 1.0.
    """
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be positive, got {sigma_frac}")
    X, Y = _pair(x, y)
    K, L = _rbf_gram(X, sigma_frac), _rbf_gram(Y, sigma_frac)
    if K is None or L is None:
        return 0.0
    K, L = _centre_gram(K), _centre_gram(L)
    return _ratio((K * L).sum(), torch.linalg.matrix_norm(K) * torch.linalg.matrix_norm(L))


def pool_tokens(h: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean-pool a token map (B, T, D) over its valid tokens to one vector per example (B, D).

    ``mask`` is (B, T), nonzero/True for valid tokens (e.g. the decoder's attention mask); None means all
    tokens are valid. An example with no valid token pools to zeros. A (B, D) input is returned unchanged.

    Example: ``h = [[[1, 2], [3, 4], [9, 9]]]``, ``mask = [[1, 1, 0]]`` → ``[[2, 3]]``.
    """
    if h.ndim == 2:
        return h
    if h.ndim != 3:
        raise ValueError(f"expected a (B, T, D) token map, got shape {tuple(h.shape)}")
    if mask is None:
        return h.mean(dim=1)
    if mask.shape != h.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match token map {tuple(h.shape[:2])}")
    m = (mask != 0).to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, D)


def cka_matrix(
    teacher_feats: Sequence[ArrayLike],
    student_feats: Sequence[ArrayLike],
    *,
    cka_fn: CKAFn = linear_cka,
) -> np.ndarray:
    """CKA of every teacher layer against every student layer: an array (len(teacher), len(student)).

    Each entry of ``teacher_feats`` / ``student_feats`` is a pooled (N, D_i) feature matrix of the same N
    examples. ``cka_fn`` picks the estimator (``linear_cka``, ``unbiased_linear_cka``, ``rbf_cka``).
    """
    out = np.zeros((len(teacher_feats), len(student_feats)), dtype=np.float64)
    for i, t in enumerate(teacher_feats):
        for j, s in enumerate(student_feats):
            out[i, j] = cka_fn(t, s)
    return out


def global_cka(matrix: np.ndarray, pairs: Sequence[tuple[int, int]]) -> float:
    """The report's "global CKA index": the mean of ``matrix[t, s]`` over the mapped (teacher, student) pairs.

    Example: ``global_cka([[0.9, 0.1], [0.2, 0.7]], [(0, 0), (1, 1)])`` → 0.8.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if not pairs:
        raise ValueError("global_cka needs at least one (teacher layer, student layer) pair")
    for t, s in pairs:
        if not (0 <= t < m.shape[0] and 0 <= s < m.shape[1]):
            raise IndexError(f"pair ({t}, {s}) is outside the CKA matrix of shape {m.shape}")
    return float(np.mean([m[t, s] for t, s in pairs]))


def _first_tensor(output: Any) -> Tensor | None:
    """The first tensor of a module output: a tensor, a tuple/list, or a dict-like ModelOutput."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, tuple | list):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def capture_activations(
    model: nn.Module,
    module_names: Sequence[str],
    run: Callable[[], Any],
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Call ``run()`` and return the (detached) output of each named submodule of ``model``.

    Names are those of ``model.named_modules()`` (e.g. ``"encoder.encoder.layers.0"``). A module returning a
    tuple or a ``ModelOutput`` contributes its first tensor. ``transform`` (e.g. ``pool_tokens``) is applied
    to every captured output. When a module runs several times inside ``run`` (``run`` loops over
    batches), the outputs are concatenated along dim 0, so run teacher-forced forward passes here, not
    ``generate``. Hooks are removed afterwards, also when ``run`` raises.

    Example: ``acts = capture_activations(model, ["encoder"], lambda: model(pixel_values=x, labels=y))``.
    """
    modules = dict(model.named_modules())
    missing = [name for name in module_names if name not in modules]
    if missing:
        raise KeyError(f"no submodule named {missing} in {type(model).__name__}")

    captured: dict[str, list[Tensor]] = {name: [] for name in module_names}

    def make_hook(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                raise TypeError(f"module {name!r} returned no tensor ({type(output).__name__})")
            tensor = tensor.detach()
            captured[name].append(transform(tensor) if transform is not None else tensor)

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in module_names]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()

    result: dict[str, Tensor] = {}
    for name, outputs in captured.items():
        if not outputs:
            raise RuntimeError(f"module {name!r} did not run during run()")
        result[name] = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
    return result
