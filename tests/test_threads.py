"""Thread pools in a training loop (docs/threads.md): correctness only, never timing.

A small MLP is trained with fastdrop's fused layers and with a plain torch reference that applies
the same masks (fastdrop.dropout with the same seeds) before nn.Linear; the trajectories must agree.
"""
import numba
import pytest
import torch

import fastdrop
from fastdrop import dropconnect_linear, dropout_linear


def _train(fused, steps=30, n=32, i=48, h=40, c=5, per_sample=None):
    torch.manual_seed(0)
    x, y = torch.randn(n, i), torch.randint(0, c, (n,))
    l1, l2 = torch.nn.Linear(i, h), torch.nn.Linear(h, c)
    opt = torch.optim.SGD(list(l1.parameters()) + list(l2.parameters()), lr=0.1)
    losses = []
    for s in range(steps):
        opt.zero_grad()
        if per_sample is None:
            if fused:
                a = dropout_linear(x, l1.weight, l1.bias, 0.3, seed=2 * s)
                out = dropout_linear(torch.relu(a), l2.weight, l2.bias, 0.3, seed=2 * s + 1)
            else:
                a = l1(fastdrop.dropout(x, 0.3, seed=2 * s))
                out = l2(fastdrop.dropout(torch.relu(a), 0.3, seed=2 * s + 1))
        else:
            if fused:
                a = dropconnect_linear(x, l1.weight, l1.bias, 0.3, seed=s, per_sample=per_sample)
            else:
                m = fastdrop.dropout_mask((n,) + tuple(l1.weight.shape) if per_sample else
                                          tuple(l1.weight.shape), 0.3, s)
                wm = l1.weight * torch.from_numpy(m).float() / 0.7
                a = (torch.einsum("ni,noi->no", x, wm) if per_sample else x @ wm.T) + l1.bias
            out = l2(torch.relu(a))
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, l1.weight.detach().clone()


@pytest.mark.parametrize("per_sample", [None, False, True])
def test_training_loop_matches_torch_reference(per_sample):
    threads = torch.get_num_threads()
    fused_losses, w_fused = _train(True, per_sample=per_sample)
    ref_losses, w_ref = _train(False, per_sample=per_sample)
    assert fused_losses[-1] < fused_losses[0]
    torch.testing.assert_close(torch.tensor(fused_losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w_fused, w_ref, rtol=1e-4, atol=1e-5)
    assert torch.get_num_threads() == threads  # fastdrop leaves torch's pool size alone


def test_threading_layer_is_shared_openmp():
    """Numba's parallel kernels run on the OpenMP layer, the libgomp torch uses (one pool)."""
    dropout_linear(torch.randn(4, 8), torch.randn(3, 8), None, 0.5, seed=0)  # launches a kernel
    layer = numba.threading_layer()
    if layer != "omp":
        pytest.skip(f"Numba picked the {layer!r} threading layer here (see docs/threads.md)")
    assert layer == "omp"
