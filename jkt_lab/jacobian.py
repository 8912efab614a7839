"""Input Jacobians: the gradient of a model's outputs with respect to its input.

Two kinds of caller need them:

* training (Section 3 of the paper): the Jacobian of *one chosen output* per example (or a
  few), for the student with ``create_graph=True`` so that a loss on it trains the student, and
  for the teacher without a graph. Computed with ``torch.autograd.grad`` so that BatchNorm in
  train mode works. :func:`output_jacobian` takes the outputs already computed by the forward
  pass, so the forward pass is not repeated.
* analysis: the exact full Jacobian of every output, :func:`input_jacobian`, through
  ``torch.func`` (one forward pass, ``vmap`` over vector-Jacobian products, chunked).

Which output is matched is a choice (Section 3, "which output to match"): ``"top1"`` (the
teacher's most likely class), ``"label"`` (the true class), ``"random"`` (a random projection
``v^T J`` with ``v ~ N(0, I)``: ``E ||v^T (J_T - J_S)||^2 = ||J_T - J_S||_F^2``, an unbiased
estimate of the all-outputs distance at the cost of one output), ``"all"`` (every output), or
an explicit index tensor with one output per example.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ._checks import check_batch, check_choice, check_index, check_int, check_labels

__all__ = ["OUTPUT_CHOICES", "projections", "output_jacobian", "matched_jacobians", "jacobian", "input_jacobian"]

OUTPUT_CHOICES = ("top1", "label", "random", "all")
Output = Literal["top1", "label", "random", "all"] | torch.Tensor


def projections(
    logits: torch.Tensor,
    output: Output = "top1",
    *,
    labels: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    num_projections: int = 1,
) -> torch.Tensor:
    """The vectors ``v`` whose products ``v^T J`` are the Jacobian rows to compute.

    Returns a tensor of shape ``(batch, m, outputs)`` on ``logits``' device, where ``m`` is 1
    for ``"top1"``, ``"label"`` and an index tensor, ``num_projections`` for ``"random"`` and
    ``outputs`` for ``"all"``. ``reference`` is the logits that decide the top-1 class (pass the
    teacher's logits so teacher and student match the same output); it defaults to ``logits``.
    Random projections are drawn from ``generator`` on the CPU, so a seed gives the same ``v``
    on every device.
    """
    check_batch(logits, "logits", min_dim=2, finite=False)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, outputs), got {tuple(logits.shape)}")
    batch, k = logits.shape
    eye_kwargs = dict(dtype=logits.dtype, device=logits.device)
    if isinstance(output, torch.Tensor):
        index = check_index(output, batch, k, "output")
        return nn.functional.one_hot(index.to(logits.device), k).to(logits.dtype).unsqueeze(1)
    if not isinstance(output, str):
        raise TypeError(
            f"output must be one of {OUTPUT_CHOICES} or a tensor of output indices, got {type(output).__name__}"
        )
    check_choice(output, "output", OUTPUT_CHOICES)
    if output == "top1":
        ref = logits if reference is None else reference
        if ref.shape != logits.shape:
            raise ValueError(f"reference must have the shape of logits {tuple(logits.shape)}, got {tuple(ref.shape)}")
        index = ref.detach().argmax(dim=1)
        return nn.functional.one_hot(index, k).to(logits.dtype).unsqueeze(1)
    if output == "label":
        if labels is None:
            raise ValueError("output='label' needs labels (the true class of each example)")
        index = check_labels(labels, batch, k, "labels")
        return nn.functional.one_hot(index.to(logits.device), k).to(logits.dtype).unsqueeze(1)
    if output == "random":
        m = check_int(num_projections, "num_projections", minimum=1)
        v = torch.randn(batch, m, k, generator=generator, dtype=logits.dtype)
        return v.to(logits.device)
    return torch.eye(k, **eye_kwargs).expand(batch, k, k)


def output_jacobian(
    outputs: torch.Tensor, x: torch.Tensor, v: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """Rows ``v_j^T dOutputs/dx`` of the input Jacobian, shape ``(batch, m, *x.shape[1:])``.

    ``outputs`` (batch, k) must have been computed from ``x`` (which requires grad); ``v`` is
    ``(batch, m, k)`` as returned by :func:`projections`. With ``create_graph=True`` the result
    is differentiable (use it for the student); without, it is detached (the teacher). Each row
    is one ``autograd.grad`` call of the summed batch, which is exact per example when examples
    do not interact (eval mode) and is the usual training-time estimate with BatchNorm in
    train mode.
    """
    if not isinstance(x, torch.Tensor) or not x.requires_grad:
        raise ValueError("x must be a tensor that requires grad and from which outputs were computed")
    if outputs.dim() != 2 or v.dim() != 3 or v.shape[0] != outputs.shape[0] or v.shape[2] != outputs.shape[1]:
        raise ValueError(
            f"v must have shape (batch, m, outputs) = ({outputs.shape[0]}, m, {outputs.shape[1]}), got {tuple(v.shape)}"
        )
    rows = []
    m = v.shape[1]
    for j in range(m):
        (g,) = torch.autograd.grad(
            outputs,
            x,
            grad_outputs=v[:, j].to(outputs.dtype),
            create_graph=create_graph,
            retain_graph=create_graph or j < m - 1,
        )
        rows.append(g)
    jac = torch.stack(rows, dim=1)
    return jac if create_graph else jac.detach()


def matched_jacobians(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    output: Output = "top1",
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher Jacobians of the same outputs, chosen by the teacher (Section 3).

    Returns ``(student_jac, teacher_jac, student_logits, teacher_logits)``. The teacher's
    Jacobian is computed without a graph (a constant target); ``create_graph=True`` makes the
    student's differentiable, for training. The teacher's logits are detached.
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        t_logits = teacher(xg)
        v = projections(t_logits.detach(), output, labels=labels, generator=generator)
        j_t = output_jacobian(t_logits, xg, v)
        s_logits = student(xg)
        j_s = output_jacobian(s_logits, xg, v, create_graph=create_graph)
    return j_s, j_t, (s_logits if create_graph else s_logits.detach()), t_logits.detach()


def jacobian(
    model: nn.Module,
    x: torch.Tensor,
    output: Output = "top1",
    *,
    labels: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    seed: int | None = None,
    num_projections: int = 1,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` and return ``(jac, logits)`` for the chosen output.

    ``jac`` has shape ``(batch, m, *x.shape[1:])`` (see :func:`projections` for ``m``). A
    convenience for analysis and tests; training code calls :func:`projections` and
    :func:`output_jacobian` on a forward pass it already has.
    """
    check_batch(x, "x")
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        v = projections(logits, output, labels=labels, reference=reference, generator=gen,
                        num_projections=num_projections)
        jac = output_jacobian(logits, xg, v, create_graph=create_graph)
    return jac, (logits if create_graph else logits.detach())


def _check_eval(model: nn.Module) -> None:
    coupled = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
    for name, module in model.named_modules():
        if module.training and isinstance(module, coupled):
            raise ValueError(
                f"model must be in eval mode for input_jacobian: module {name or type(module).__name__!r} "
                "is in training mode (BatchNorm/Dropout make examples interact); call model.eval() first"
            )


def input_jacobian(
    model: nn.Module,
    x: torch.Tensor,
    *,
    chunk_size: int | None = None,
    method: Literal["vmap", "loop"] = "vmap",
) -> torch.Tensor:
    """Exact Jacobian of every output with respect to the input, ``(batch, outputs, *x.shape[1:])``.

    ``method="vmap"`` runs one forward pass and ``torch.func.vmap`` over the vector-Jacobian
    products of the one-hot output directions, ``chunk_size`` outputs at a time (default:
    a chunk that keeps about 2**26 Jacobian entries in memory). ``method="loop"`` is the
    reference: one ``autograd.grad`` call per output. The model must be in eval mode.
    """
    check_batch(x, "x")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_choice(method, "method", ("vmap", "loop"))
    _check_eval(model)
    if method == "loop":
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = model(xg)
            _check_outputs(out, x)
            v = torch.eye(out.shape[1], dtype=out.dtype, device=out.device).expand(x.shape[0], -1, -1)
            return output_jacobian(out, xg, v)
    with torch.enable_grad():
        out, vjp_fn = torch.func.vjp(model, x.detach())
    _check_outputs(out, x)
    k = out.shape[1]
    if chunk_size is None:
        chunk_size = max(1, min(k, 2**26 // max(1, x.numel())))
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    basis = torch.eye(k, dtype=out.dtype, device=out.device)
    pieces = []
    for start in range(0, k, chunk_size):
        rows = basis[start:start + chunk_size]                        # (c, k)
        cot = rows.unsqueeze(1).expand(-1, x.shape[0], -1)            # (c, batch, k)
        (g,) = torch.func.vmap(vjp_fn)(cot)                           # (c, batch, *in)
        pieces.append(g)
    return torch.cat(pieces, dim=0).transpose(0, 1).contiguous().detach()


def _check_outputs(out, x) -> None:
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model must map x of batch {x.shape[0]} to outputs of shape (batch, k), got {shape}")
