"""Where the model-running tests run, and how closely results must agree there.

    from devices import DEVICE, batch_close
    pipe = tiny_pipeline("sd15")                 # already on DEVICE
    batch_close(alone, in_batch)                 # one item computed alone vs inside a batch

DEVICE follows lab.load's choice: CUDA when one is visible, else the CPU. On the CPU every check stays as exact as
it was. On a GPU, cuBLAS and cuDNN pick kernels by problem size, and cuDNN convolutions run in TF32 by default, so an
image computed alone and the same image inside a batch agree only to the last bits of TF32 (10-bit mantissa):
``batch_close`` then allows ``GPU_BATCH_TOLERANCE``. That value is checked by the GPU lane (scripts/gpu_check.sh,
which runs this suite with CUDA visible and LAB_TOLERANCE_LOG set, so every batch_close writes the difference it
saw; not yet run on a GPU as of 2026-11-30, so the value is TF32's precision, not a measurement).
"""
from __future__ import annotations

import os

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
# Relative error of TF32 (2**-10 ~ 1e-3) with headroom for a sum over a few hundred terms. Used on CUDA only.
GPU_BATCH_TOLERANCE = dict(atol=5e-3, rtol=5e-3)


def batch_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """assert_close for results that differ only in batch composition: the given (CPU) tolerance on the CPU, the
    measured GPU one on CUDA, where kernels legitimately change with the batch."""
    tol = GPU_BATCH_TOLERANCE if ON_GPU else dict(atol=atol, rtol=rtol)
    actual, expected = actual.cpu(), expected.cpu()
    log = os.environ.get("LAB_TOLERANCE_LOG")  # the GPU lane records what the kernels' differences really are
    if log:
        diff = (actual.double() - expected.double()).abs()
        rel = (diff / expected.double().abs().clamp_min(1e-12)).max().item()
        with open(log, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\tmax abs {diff.max().item():.3e}"
                    f"\tmax rel {rel:.3e}\n")
    torch.testing.assert_close(actual, expected, **tol)
