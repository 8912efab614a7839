"""An independent reference for per-example Jacobians under train-mode BatchNorm (shared by tests).

The training Jacobian's row i is example i's own derivative with the batch statistics held
constant (jkt_lab.jacobian.jacobian_forward). The reference is built another way: a copy of the
network in eval mode whose running statistics are set to the batch's statistics (recorded by
hooks in a train-mode forward pass), differentiated one example at a time with torch.func.
"""
import copy

import torch
from torch import nn


def batch_statistics(model, x):
    """{BatchNorm module name: (mean, biased variance) of its input} in a train-mode pass on x."""
    stats, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            def hook(mod, args, name=name):
                a = args[0]
                dims = [0, *range(2, a.dim())]
                stats[name] = (a.mean(dims), a.var(dims, unbiased=False))
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.train()(x)
    for h in hooks:
        h.remove()
    return stats


def held_copy(model, x):
    """An eval-mode copy of ``model`` that normalises with the batch statistics of ``x``."""
    ref = copy.deepcopy(model)
    stats = batch_statistics(ref, x)
    for name, module in ref.named_modules():
        if name in stats:
            module.running_mean.copy_(stats[name][0])
            module.running_var.copy_(stats[name][1])
    return ref.eval()


def per_example_jacobian(fn, x):
    """(batch, *out, *in): the Jacobian of ``fn`` applied to one example at a time."""
    one = lambda xi: fn(xi.unsqueeze(0)).squeeze(0)                 # noqa: E731
    return torch.stack([torch.func.jacrev(one)(x[i]) for i in range(x.shape[0])]).detach()


def held_reference(model, x):
    """(batch, k, *in): example i's Jacobian of every output, batch statistics as constants."""
    return per_example_jacobian(held_copy(model, x), x)
