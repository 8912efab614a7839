"""Input Jacobians: the gradient of a model's outputs with respect to its input.

Two kinds of caller need them:

* training (Section 3 of the paper): the Jacobian of *one chosen output* per example (or a
  few), for the student with ``create_graph=True`` so that a loss on it trains the student, and
  for the teacher without a graph. Computed with ``torch.autograd.grad`` of the summed batch
  on the outputs of :func:`jacobian_forward`, which makes row ``i`` example ``i``'s own
  derivative even with BatchNorm in train mode (see there).
* analysis: the exact full Jacobian of every output, :func:`input_jacobian`, through
  ``torch.func`` (one forward pass, ``vmap`` over vector-Jacobian products, chunked).

Which output is matched is a choice (Section 3, "which output to match"): ``"top1"`` (the
teacher's most likely class), ``"label"`` (the true class), ``"random"`` (random projections
``v^T J``: with ``z ~ N(0, I)``, ``E ||z^T (J_T - J_S)||^2 = ||J_T - J_S||_F^2``, an unbiased
estimate of the all-outputs distance at the cost of one output; ``m`` projections are scaled by
``1/sqrt(m)`` so that the summed squared distance is the *mean* of ``m`` such estimates),
``"all"`` (every output), or an explicit index tensor with one output per example.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from ._checks import check_batch, check_choice, check_index, check_int, check_labels

__all__ = ["OUTPUT_CHOICES", "projections", "jacobian_forward", "batch_coupled_modules", "output_jacobian",
           "teacher_jacobian", "matched_jacobians", "jacobian", "input_jacobian"]

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
    Random projections are ``v_j = z_j / sqrt(m)`` with ``z_j ~ N(0, I)`` drawn from
    ``generator`` on the CPU (a seed gives the same ``v`` on every device): the squared distance
    summed over the ``m`` rows (what ``jacobian_loss(kind="squared")`` computes) is then the mean
    of ``m`` unbiased estimates of ``||J_T - J_S||_F^2``, unbiased for every ``m``. The
    normalised kinds are invariant to the scale of each row.
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
        v = torch.randn(batch, m, k, generator=generator, dtype=logits.dtype) / m ** 0.5
        return v.to(logits.device)
    return torch.eye(k, **eye_kwargs).expand(batch, k, k)


def batch_coupled_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm modules of ``model`` that normalise with the statistics of the current batch
    (train mode, or no running statistics): through them every example's output depends on
    every other example of the batch."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)]


def _dims(inp: torch.Tensor) -> list[int]:
    return [0, *range(2, inp.dim())]


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _channel_view(t: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (inp.dim() - 2)))


@contextmanager
def _recording_batch_statistics(modules, store: dict):
    """Record, for each call of each module in ``modules``, the batch mean and (biased) variance
    of its input (at least in float32), as functions of the weights (not detached)."""
    def record(module, args):
        var, mean = torch.var_mean(_at_least_float32(args[0]), dim=_dims(args[0]), correction=0)
        store.setdefault(module, []).append((mean, var))

    handles = [m.register_forward_pre_hook(record) for m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _held_batch_norm(module: nn.Module, calls):
    """BatchNorm with recorded statistics ``(mean, var)``, constants with respect to its input:
    ``y = inp * scale + shift`` with the per-channel ``scale = weight / sqrt(var + eps)`` and
    ``shift = bias - mean * scale`` (one fused pass over the activations)."""
    def forward(inp):
        mean, var = next(calls)
        if inp.dim() < 2 or inp.shape[1] != mean.numel():
            raise RuntimeError(f"BatchNorm {module!r} got an input of shape {tuple(inp.shape)} in the Jacobian "
                               "pass that does not match the training pass")
        scale = torch.rsqrt(var + module.eps)
        if module.affine:
            scale = scale * module.weight
            shift = module.bias - mean * scale
        else:
            shift = -mean * scale
        y = torch.addcmul(_channel_view(shift, inp), _at_least_float32(inp), _channel_view(scale, inp))
        return y.to(inp.dtype)
    return forward


def _masked_relu(inp: torch.Tensor) -> torch.Tensor:
    return inp * (inp.detach() > 0).to(inp.dtype)


def _indexed_max_pool(module: nn.MaxPool2d):
    def forward(inp):
        _, index = nn.functional.max_pool2d(inp.detach(), module.kernel_size, module.stride, module.padding,
                                            module.dilation, module.ceil_mode, return_indices=True)
        return inp.flatten(-2).gather(-1, index.flatten(-2)).view(index.shape)
    return forward


def _global_mean(inp: torch.Tensor) -> torch.Tensor:
    return inp.mean((-2, -1), keepdim=True)


def _with_constant_masks(module: nn.Module):
    """A replacement forward for ``module`` that equals it as a function (values, and derivatives
    of every order almost everywhere) but whose backward does not depend on its input: ReLU as
    the input times its (constant) sign mask, max pooling as a gather at the (constant) argmax,
    global average pooling as a mean. Their native backward formulas save the input and send a
    zero tensor back to it under double backward (``zeros_like``), which makes the loss on a
    Jacobian run a second, all-zero backward pass through the network; with these, the
    Jacobian's graph reaches the weights only (through the convolutions' and linear layers'
    transposes and the BatchNorm scales). None for modules without such a form."""
    if isinstance(module, nn.ReLU):
        return _masked_relu
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:
        return _indexed_max_pool(module)
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return _global_mean
    return None


@contextmanager
def _holding_batch_statistics(model: nn.Module, store: dict):
    """Inside, each recorded BatchNorm normalises with the statistics recorded for it (as
    constants with respect to its input) and does not touch its running statistics; ReLU and
    pooling modules of ``model`` run in their constant-mask forms (:func:`_with_constant_masks`),
    the same function with a cheaper double backward."""
    patched = []
    for module, recorded in store.items():
        module.forward = _held_batch_norm(module, iter(recorded))
        patched.append(module)
    for module in model.modules():
        forward = None if module in store else _with_constant_masks(module)
        if forward is not None:
            module.forward = forward
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def jacobian_forward(model: nn.Module, x: torch.Tensor, fn: Callable | None = None):
    """Run ``fn`` (default: ``model``) on ``x`` for training and for per-example input Jacobians.

    Returns ``(outputs, jacobian_outputs, xg)``: ``outputs`` are the ordinary forward pass (the
    one cross-entropy and distillation train through), ``jacobian_outputs`` were computed from
    the leaf ``xg`` (``x`` itself when it is a leaf that requires grad, else a detached copy)
    such that ``autograd.grad`` of their batch sum gives, in row ``i``, example ``i``'s own
    derivative ``d output_i / d x_i``.

    Without batch-coupled modules (see :func:`batch_coupled_modules`: eval mode, no BatchNorm)
    this is one forward pass on ``xg`` and both outputs are the same tensor. With BatchNorm in
    train mode, the gradient of the summed batch would mix every example into every row through
    the batch statistics, so the network runs twice: once ordinarily on ``x`` (which updates the
    running statistics, once), recording each BatchNorm's batch mean and variance; then on
    ``xg`` with each BatchNorm normalising by the recorded statistics, held constant with respect
    to the input, without touching its running statistics. The two passes agree in value. In
    the second pass ReLU and pooling modules run in constant-mask forms, the same functions whose
    double backward skips an all-zero pass through the network (:func:`_with_constant_masks`;
    about 20% of a kd+jacobian step on the CPU, ``benchmarks/README.md``).

    Definition (the Jacobian matched in training): ``J_i = d/dx_i f(x_i; theta, mu(theta),
    var(theta))``, with the batch statistics ``mu, var`` the batch's, treated as constants with
    respect to the input but as the functions of the weights they are, so the weight gradient of
    a loss on ``J`` is exact for this definition (it flows through the statistics, as the
    ordinary train-mode gradient does). Why this and not the alternatives: it is what the
    network computes for example ``i`` in this batch, it costs one extra forward pass (the
    benchmarks measure it, ``benchmarks/README.md``), keeps the training forward pass ordinary
    (detaching the statistics there costs accuracy), and works with ``create_graph=True`` on
    any model; the diagonal block of the batch Jacobian would add each example's own
    O(1/batch) share of the statistics, and ``torch.func`` per-example Jacobians need the
    same held statistics passed in and a ``vmap`` of double-backward, slower on the CPU.
    Dropout in train mode draws different masks in the two passes.
    """
    check_batch(x, "x")
    fn = model if fn is None else fn
    xg = x if (x.is_leaf and x.requires_grad) else x.detach().requires_grad_(True)
    coupled = batch_coupled_modules(model)
    with torch.enable_grad():
        if not coupled:
            out = fn(xg)
            return out, out, xg
        store: dict = {}
        with _recording_batch_statistics(coupled, store):
            out = fn(x.detach())
        with _holding_batch_statistics(model, store):
            jac_out = fn(xg)
    return out, jac_out, xg


def output_jacobian(
    outputs: torch.Tensor, x: torch.Tensor, v: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """Rows ``v_j^T dOutputs/dx`` of the input Jacobian, shape ``(batch, m, *x.shape[1:])``.

    ``outputs`` (batch, k) must have been computed from ``x`` (which requires grad); ``v`` is
    ``(batch, m, k)`` as returned by :func:`projections`. With ``create_graph=True`` the result
    is differentiable (use it for the student); without, it is detached (the teacher). Each row
    is one ``autograd.grad`` call of the summed batch, which is example ``i``'s own Jacobian in
    row ``i`` only when examples do not interact: take ``outputs`` from
    :func:`jacobian_forward` (BatchNorm in train mode couples the examples of a batch).
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


def teacher_jacobian(
    teacher: nn.Module,
    x: torch.Tensor,
    output: Output = "top1",
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    num_projections: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's half of :func:`matched_jacobians`: ``(teacher_jac, teacher_logits, v)``, the
    Jacobian rows ``v^T J`` of the outputs the teacher chooses (:func:`projections`, with the
    teacher's logits as reference), computed without a graph, and its detached logits."""
    check_batch(x, "x")
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        _, t_out, _ = jacobian_forward(teacher, xg)
        v = projections(t_out.detach(), output, labels=labels, generator=generator, num_projections=num_projections)
        j_t = output_jacobian(t_out, xg, v)
    return j_t, t_out.detach(), v


def matched_jacobians(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    output: Output = "top1",
    *,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    num_projections: int = 1,
    teacher_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student and teacher Jacobians of the same outputs, chosen by the teacher (Section 3).

    Returns ``(student_jac, teacher_jac, student_logits, teacher_logits)``. Row ``i`` of each
    Jacobian is example ``i``'s own, also in train mode (:func:`jacobian_forward`); the
    student's logits are its ordinary forward pass. The teacher's Jacobian is computed without a
    graph (a constant target, :func:`teacher_jacobian`); ``create_graph=True`` makes the
    student's differentiable, for training. The teacher's logits are detached.
    ``teacher_outputs``: the teacher's ``(teacher_jac, teacher_logits)`` on ``x``, computed
    before (a :class:`~jkt_lab.teacher_cache.TeacherCache`); not for ``"random"`` outputs,
    whose projections are drawn anew with ``generator``.
    """
    check_batch(x, "x")
    if teacher_outputs is None:
        j_t, t_logits, v = teacher_jacobian(teacher, x, output, labels=labels, generator=generator,
                                            num_projections=num_projections)
    else:
        if isinstance(output, str) and output == "random":
            raise ValueError("teacher_outputs cannot be reused for output='random' (projections are drawn per call)")
        j_t, t_logits = teacher_outputs
        v = projections(t_logits, output, labels=labels, num_projections=num_projections)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        s_logits, s_out, _ = jacobian_forward(student, xg)
        j_s = output_jacobian(s_out, xg, v, create_graph=create_graph)
    return j_s, j_t, (s_logits if create_graph else s_logits.detach()), t_logits


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

    ``jac`` has shape ``(batch, m, *x.shape[1:])`` (see :func:`projections` for ``m``); row
    ``i`` is example ``i``'s own Jacobian, also in train mode (:func:`jacobian_forward`). A
    convenience for analysis and tests; training code calls :func:`matched_jacobians`.
    """
    check_batch(x, "x")
    with torch.enable_grad():
        logits, out, xg = jacobian_forward(model, x)
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        v = projections(out, output, labels=labels, reference=reference, generator=gen,
                        num_projections=num_projections)
        jac = output_jacobian(out, xg, v, create_graph=create_graph)
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
