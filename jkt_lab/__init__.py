"""jkt_lab: a teaching package for "Knowledge Transfer with Jacobian Matching"
(Srinivas & Fleuret, ICML 2018).

    import jkt_lab as jl
    jl.input_jacobian(model, x)           # exact Jacobian of every output
    jl.jacobian_loss(j_student, j_teacher, kind="normalized")
    jl.equivalence(teacher, student, x, sigma=0.05, n_samples=1000)
    teacher, card = jl.pretrained_teacher("cifar10")   # a teacher shipped with the package
"""
from .jacobian import input_jacobian, jacobian, output_jacobian, projections
from .losses import (
    activation_loss,
    attention_jacobian_loss,
    attention_map,
    attention_transfer_loss,
    jacobian_loss,
    kd_loss,
    lwf_loss,
    noisy_distillation_loss,
)
from .pretrained import pretrained_teacher
from .theory import equivalence, sigma_sweep

__version__ = "0.1.0"

__all__ = [
    "input_jacobian", "jacobian", "output_jacobian", "projections",
    "activation_loss", "attention_jacobian_loss", "attention_map", "attention_transfer_loss",
    "jacobian_loss", "kd_loss", "lwf_loss", "noisy_distillation_loss",
    "equivalence", "sigma_sweep", "pretrained_teacher",
]
