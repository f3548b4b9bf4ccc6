"""Learning-rate schedules as pure functions of the iteration number.

All take the 0-based iteration t and return the learning rate to use for that
iteration's update; a linear warm-up may precede any of them.
"""

import math

SCHEDULES = ("constant", "exponential", "step", "cosine")


def learning_rate(t, base_lr, schedule="constant", *, iterations_per_epoch=1, num_iterations=1,
                  lr_decay=1.0, step_size=1, gamma=0.1, warmup_iterations=0, min_lr=0.0):
    """Learning rate at iteration t.

    - constant: base_lr
    - exponential: base_lr * lr_decay ** epoch (CS231n's per-epoch decay)
    - step: base_lr * gamma ** (epoch // step_size)
    - cosine: min_lr + (base_lr - min_lr) * (1 + cos(pi * progress)) / 2 over the
      iterations after the warm-up
    With warmup_iterations > 0, the rate first rises linearly from base_lr / warmup to
    the scheduled value over that many iterations.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f'unknown lr_schedule "{schedule}"; choose one of {SCHEDULES}')
    epoch = t // max(iterations_per_epoch, 1)
    if schedule == "constant":
        lr = base_lr
    elif schedule == "exponential":
        lr = base_lr * lr_decay**epoch
    elif schedule == "step":
        lr = base_lr * gamma ** (epoch // max(step_size, 1))
    else:
        span = max(num_iterations - warmup_iterations, 1)
        progress = min(max(t - warmup_iterations, 0) / span, 1.0)
        lr = min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    if warmup_iterations > 0 and t < warmup_iterations:
        lr *= (t + 1) / warmup_iterations
    return lr
