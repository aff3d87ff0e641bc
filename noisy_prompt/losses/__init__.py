"""Loss functions of DP-SEP, PTNL and TANGO as pure functions of tensors."""
from noisy_prompt.losses.derangement import (
    DerangementSampler,
    random_derangement,
    shift_derangement,
)
from noisy_prompt.losses.gce import check_logits_targets, gce_loss
from noisy_prompt.losses.par import A_POS_REDUCTIONS, PAR_MODES, alpha_schedule, dpsep_total, par_gate_weights, par_losses
from noisy_prompt.losses.sep import SEP_SIGNS, sep_loss
from noisy_prompt.losses.soft import masked_cross_entropy, mixup, soft_cross_entropy

__all__ = [
    "A_POS_REDUCTIONS",
    "PAR_MODES",
    "SEP_SIGNS",
    "DerangementSampler",
    "alpha_schedule",
    "check_logits_targets",
    "dpsep_total",
    "gce_loss",
    "masked_cross_entropy",
    "mixup",
    "par_gate_weights",
    "par_losses",
    "random_derangement",
    "sep_loss",
    "shift_derangement",
    "soft_cross_entropy",
]
