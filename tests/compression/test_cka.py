"""CKA estimators against the published test vector, invariances and independent reference formulas."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from donut_hole.compression.cka import (
    capture_activations,
    cka_matrix,
    global_cka,
    linear_cka,
    pool_tokens,
    rbf_cka,
    unbiased_linear_cka,
)


@pytest.fixture
def xy() -> tuple[np.ndarray, np.ndarray]:
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def _random_orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# --- linear CKA -------------------------------------------------------------------------------------------


def test_linear_cka_test_vector(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = xy
    assert round(linear_cka(X, Y), 5) == 0.55761
    assert linear_cka(X, X) == pytest.approx(1.0)


def test_linear_cka_accepts_torch_and_returns_float(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = xy
    value = linear_cka(torch.from_numpy(X).float(), torch.from_numpy(Y))
    assert isinstance(value, float)
    assert value == pytest.approx(0.55761, abs=1e-5)  # float32 input, float64 math


def test_linear_cka_matches_gram_form(xy: tuple[np.ndarray, np.ndarray]) -> None:
    # <HKH, HLH> / (||HKH|| ||HLH||) with K = XXᵀ, L = YYᵀ equals the feature-space form
    X, Y = xy
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    assert linear_cka(X, Y) == pytest.approx(np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L)))


@pytest.mark.parametrize("cka", [linear_cka, unbiased_linear_cka, rbf_cka])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(cka, xy) -> None:  # type: ignore[no-untyped-def]
    X, Y = xy
    Q = _random_orthogonal(10, seed=0)
    reference = cka(X, Y)
    assert cka(X @ Q, Y) == pytest.approx(reference, abs=1e-10)
    assert cka(X, 3.7 * Y @ Q) == pytest.approx(reference, abs=1e-10)
    assert cka(X + 5.0, Y) == pytest.approx(reference, abs=1e-10)  # translation


def test_linear_cka_different_widths() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 8))
    Y = np.concatenate([X, rng.standard_normal((50, 24))], axis=1)  # (50, 32)
    assert 0.0 < linear_cka(X, Y) < 1.0
    assert linear_cka(X, X @ rng.standard_normal((8, 32))) < 1.0  # not invariant to general linear maps


# --- unbiased and RBF -------------------------------------------------------------------------------------


def _u_centred(K: np.ndarray) -> np.ndarray:
    """Székely–Rizzo U-centring; <Ũ_K, Ũ_L> / (n(n-3)) is the unbiased HSIC (an independent formula)."""
    n = K.shape[0]
    K = K.copy()
    np.fill_diagonal(K, 0.0)
    row = K.sum(axis=0) / (n - 2)
    U = K - row[:, None] - row[None, :] + K.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(U, 0.0)
    return U


def test_unbiased_cka_matches_u_centring(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = xy
    Kx, Ky = _u_centred(X @ X.T), _u_centred(Y @ Y.T)
    expected = np.sum(Kx * Ky) / np.sqrt(np.sum(Kx * Kx) * np.sum(Ky * Ky))
    assert unbiased_linear_cka(X, Y) == pytest.approx(expected, abs=1e-10)


def test_unbiased_cka_range_and_identity(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = xy
    assert unbiased_linear_cka(X, X) == pytest.approx(1.0)
    assert 0.0 < unbiased_linear_cka(X, Y) < 1.0
    # independent wide features: linear CKA is biased upwards, the unbiased one stays near 0
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((30, 500)), rng.standard_normal((30, 500))
    assert linear_cka(A, B) > 0.5
    assert abs(unbiased_linear_cka(A, B)) < 0.1
    assert unbiased_linear_cka(A[:3], B[:3]) == 0.0  # needs N ≥ 4


def test_rbf_cka_range_and_identity(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = xy
    assert rbf_cka(X, X) == pytest.approx(1.0)
    assert 0.0 < rbf_cka(X, Y) < 1.0
    assert rbf_cka(X, Y, sigma_frac=0.4) != pytest.approx(rbf_cka(X, Y, sigma_frac=0.8))


def test_rbf_cka_matches_kornblith_numpy(xy: tuple[np.ndarray, np.ndarray]) -> None:
    # gram_rbf with threshold 0.8 (median over all N² squared distances), then centred-Gram CKA
    X, Y = xy

    def gram(x: np.ndarray) -> np.ndarray:
        sq = np.sum(x * x, axis=1)
        d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
        return np.exp(-d2 / (2 * 0.8**2 * np.median(d2)))

    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ gram(X) @ H, H @ gram(Y) @ H
    assert rbf_cka(X, Y) == pytest.approx(np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L)), abs=1e-10)


def test_degenerate_inputs_give_zero() -> None:
    const = np.ones((10, 4))
    rng = np.random.default_rng(0)
    assert linear_cka(const, rng.standard_normal((10, 4))) == 0.0
    assert rbf_cka(const, rng.standard_normal((10, 4))) == 0.0


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="pool_tokens"):
        linear_cka(np.zeros((2, 3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(np.zeros((5, 3)), np.zeros((6, 3)))
    with pytest.raises(ValueError):
        rbf_cka(np.zeros((5, 3)), np.zeros((5, 3)), sigma_frac=0.0)


# --- pooling, matrix, global index ------------------------------------------------------------------------


def test_pool_tokens_with_mask() -> None:
    h = torch.tensor(
        [[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]]]
    )  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # example 0: mean of the two valid tokens; example 1: no valid token → zeros
    assert torch.equal(pool_tokens(h, mask), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))
    assert torch.equal(pool_tokens(h), torch.tensor([[13 / 3, 5.0], [2.0, 2.0]]))
    assert pool_tokens(h[:, 0]) is not None and pool_tokens(h[:, 0]).shape == (2, 2)
    with pytest.raises(ValueError):
        pool_tokens(h, mask[:, :2])


def test_cka_matrix_and_global_cka(xy: tuple[np.ndarray, np.ndarray]) -> None:
    X, Y = xy
    Z = np.random.default_rng(2).standard_normal((100, 6))
    m = cka_matrix([X, Y], [X, Z, Y])
    assert m.shape == (2, 3)
    assert m[0, 0] == pytest.approx(1.0) and m[1, 2] == pytest.approx(1.0)
    assert m[0, 2] == pytest.approx(0.5576132566, abs=1e-9) and m[1, 0] == pytest.approx(m[0, 2])
    # mean over the mapped pairs: (1 + 1) / 2
    assert global_cka(m, [(0, 0), (1, 2)]) == pytest.approx(1.0)
    assert global_cka(np.array([[0.9, 0.1], [0.2, 0.7]]), [(0, 0), (1, 1)]) == pytest.approx(0.8)
    unbiased = cka_matrix([X], [Y], cka_fn=unbiased_linear_cka)
    assert unbiased[0, 0] == pytest.approx(unbiased_linear_cka(X, Y))
    with pytest.raises(ValueError):
        global_cka(m, [])
    with pytest.raises(IndexError):
        global_cka(m, [(2, 0)])


# --- activation capture -----------------------------------------------------------------------------------


class _TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x * 2, None


class _DictOut(nn.Module):
    """Returns a dict-like output, as Hugging Face ``ModelOutput`` does (None fields first)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        return OrderedDict(loss=None, last_hidden_state=x + 1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
        self.pair = _TupleOut()
        self.out = _DictOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pair(self.body(x))[0])["last_hidden_state"]


def test_capture_activations_by_name() -> None:
    torch.manual_seed(0)
    net, x = _Net(), torch.randn(5, 4)
    acts = capture_activations(net, ["body.0", "body", "pair", "out"], lambda: net(x))
    assert torch.allclose(acts["body.0"], net.body[0](x))
    assert torch.allclose(acts["body"], torch.relu(net.body[0](x)))
    assert torch.allclose(acts["pair"], 2 * acts["body"])  # first tensor of the tuple
    assert torch.allclose(acts["out"], acts["pair"] + 1)  # first tensor value of the mapping
    assert not acts["body"].requires_grad
    assert all(not m._forward_hooks for m in net.modules())


def test_capture_activations_concatenates_batches_and_transforms() -> None:
    net = _Net()
    batches = [torch.randn(2, 4), torch.randn(3, 4)]
    acts = capture_activations(
        net, ["body"], lambda: [net(b) for b in batches], transform=lambda t: t.sum(dim=1, keepdim=True)
    )
    assert acts["body"].shape == (5, 1)


def test_capture_activations_removes_hooks_on_error() -> None:
    net = _Net()

    def boom() -> None:
        net(torch.randn(1, 4))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture_activations(net, ["body"], boom)
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(KeyError):
        capture_activations(net, ["nope"], lambda: None)
    with pytest.raises(RuntimeError, match="did not run"):
        capture_activations(net, ["body"], lambda: None)
