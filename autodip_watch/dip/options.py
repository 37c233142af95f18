"""The settings of one DIP fit that are not part of the calibrated configuration.

Plain data, no torch: settings and fit modes (``modes.py``) build them without loading
the engine; ``fit.py`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitOptions:
    """Optimisation settings that are not part of the calibrated configuration."""

    seed: int = 0
    learning_rate: float = 0.01
    reg_noise_std: float = 0.0
    ema_weight: float | None = None  # e.g. 0.99 in the original DIP; None = off
    # Speed settings (bench/speed.py measures them); the defaults are the plain path.
    # TF32 is not among them: torch switches it for the whole process, so it is set
    # once where a process configures its engine (device.configure_tf32).
    channels_last: bool = False  # NHWC memory layout for the convolutions
    bf16: bool = False  # bfloat16 autocast of the forward pass (loss and Adam stay fp32)
    compile: bool = False  # torch.compile the network
    # Replay one captured CUDA graph per iteration instead of launching each kernel from
    # Python (CUDA only): the small widefield networks are bound by launch overhead.
    cuda_graphs: bool = False
    # Stabilisation (module docstring); 0 / None / False = the paper's last iterate.
    #: Return the mean output of the last ``average_fraction`` of the iterations (0 < f <= 1).
    average_fraction: float = 0.0
    #: A loss above ``spike_factor`` x the lowest of the SPIKE_REFERENCE_ITERATIONS before
    #: it marks a spike: left out of the average, and the trigger of ``rollback``.
    spike_factor: float | None = None
    #: After a spike, restore each network's weights from its last healthy check (Adam's
    #: moments are kept: their inflated second moments damp the steps that follow).
    rollback: bool = False
    #: Ground-truth-free extension (the discrepancy principle, ``fit.py``): run on past the
    #: transferred count, by up to this fraction of it, while a network's residual is
    #: still above the estimated noise variance of its tile but within
    #: ``discrepancy_margin`` x of it. Needs the tiles' noise variances (``fit_tiles``);
    #: without them, or at 0, the fit stops at the transferred count.
    extend_fraction: float = 0.0
    #: A residual more than this many times the estimated noise variance at the
    #: transferred count means the noise estimate does not explain it (spatially
    #: correlated noise, an estimator fooled by texture): the prior is kept.
    discrepancy_margin: float = 2.0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if self.reg_noise_std < 0:
            raise ValueError("reg_noise_std must be >= 0")
        if self.ema_weight is not None and not 0.0 <= self.ema_weight < 1.0:
            raise ValueError("ema_weight must be in [0, 1)")
        if not 0.0 <= self.average_fraction <= 1.0:
            raise ValueError("average_fraction must be in [0, 1]")
        if self.spike_factor is not None and self.spike_factor <= 1.0:
            raise ValueError("spike_factor must be greater than 1")
        if not 0.0 <= self.extend_fraction <= 1.0:
            raise ValueError("extend_fraction must be in [0, 1]")
        if self.discrepancy_margin < 1.0:
            raise ValueError("discrepancy_margin must be at least 1")
        if self.rollback and self.spike_factor is None:
            raise ValueError("rollback needs spike_factor (what counts as a spike)")
        if self.cuda_graphs and self.compile:
            raise ValueError("cuda_graphs and compile do not combine: capture the eager step, "
                             "or let torch.compile graph it (mode='reduce-overhead')")
