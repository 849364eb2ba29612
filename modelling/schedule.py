"""The learning-rate schedule and the checkpoint schedule of a run."""
import math

LOG_SPACED = [2 ** i for i in range(10)]  # 1, 2, 4, …, 512 steps


def get_lr(step, n_steps, learning_rate, warmup_iters, min_lr, decay_lr=True):
    """Linear warmup over warmup_iters steps (step is 1-based), then cosine decay to min_lr at the last step."""
    if not decay_lr:
        return learning_rate
    if step <= warmup_iters:
        return learning_rate * step / warmup_iters
    span = max(1, n_steps - warmup_iters)
    ratio = min(1.0, (step - warmup_iters) / span)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def checkpoint_steps(n_steps, eval_interval):
    """Log-spaced 1, 2, 4, …, 512, then every eval_interval, and the last step."""
    steps = {s for s in LOG_SPACED if s <= n_steps}
    steps |= set(range(eval_interval, n_steps + 1, eval_interval))
    steps.add(n_steps)
    return sorted(steps)
