"""Memory a training run will need, estimated before it starts, against what the machine has.

A setting that sizes memory (the minibatch, the captions sampled per image by self-critical
training, max_train) is refused in one line when its estimate exceeds the memory available,
instead of the kernel's OOM killer ending the run hours later without a message.

The estimates are rough upper-end figures of the largest arrays, not a measurement: one
training step keeps, for each caption row and time step, the scores, their softmax and
their gradient (3 V values) and the hidden activations of the forward and backward passes
(about 16 per unit of width and layer, and the attention weights of a transformer).
Dimension letters: N captions of a step, T time steps, V vocabulary, W word vector size,
H hidden size, L layers.
"""

from pathlib import Path

from capmodel.vocab import CAPTION_LENGTH

GB = 1e9


def available_bytes():
    """Memory this process may still take: MemAvailable of /proc/meminfo, lowered to what is
    left under a cgroup memory limit; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            found.append(max(int(limit) - usage, 0))
    return min(found) if found else None


def bytes_per_row(model, T):
    """Estimated bytes one caption row of T steps takes in a training step (loss and backward)."""
    desc = model.describe()
    V = len(model.word_to_idx)
    W, H = desc.get("wordvec_dim", 0), desc.get("hidden_dim", 0)
    layers = desc.get("num_layers", 1)
    attention = desc.get("num_heads", 0) * T  # a transformer's (heads, T) weights per step
    per_step = 3 * V + 16 * (W + H) * layers + 3 * attention * layers
    return per_step * T * model.dtype.itemsize


def _shown(n):
    return f"{n / GB:.1f} GB"


def check_training(model, data, settings, objective, available=None):
    """Raise ValueError (one line naming the settings and the estimate) when one training
    step of the objective would need more memory than is available.

    Inputs:
    - model, data: the model and the data dict of the run
    - settings: the run's checked training settings
    - objective: its capmodel.objectives objective (rows(batch_size): caption rows of a step)
    - available: bytes available (default: available_bytes(); None skips the check)
    """
    available = available_bytes() if available is None else available
    if available is None:
        return
    T = data["train_captions"].shape[1] - 1
    per_row = bytes_per_row(model, T)
    batch = settings["batch_size"]
    rows = objective.rows(batch)
    need = rows * per_row
    if need <= available:
        return
    fit = int(available // per_row)  # rows that fit
    if rows == batch:
        raise ValueError(f"--batch-size {batch}: one training step over {batch} captions needs about {_shown(need)}, "
                         f"more than the {_shown(available)} of memory available; at most {fit} captions per "
                         "batch fit")
    per_image = rows // batch
    raise ValueError(f"--scst-samples {per_image} with --batch-size {batch}: one training step over {rows} sampled "
                     f"captions needs about {_shown(need)}, more than the {_shown(available)} of memory available; "
                     f"at most {fit // batch} samples per image fit with --batch-size {batch}")


def check_max_train(max_train, available=None):
    """Raise ValueError when subsampling max_train captions (with replacement) would not fit."""
    available = available_bytes() if available is None else available
    if max_train is None or available is None:
        return
    need = max_train * (CAPTION_LENGTH * 4 + 4 + 8)  # int32 captions and image index, the int64 draw
    if need > available:
        raise ValueError(f"--max-train {max_train}: the subsampled captions need about {_shown(need)}, more than the "
                         f"{_shown(available)} of memory available")
