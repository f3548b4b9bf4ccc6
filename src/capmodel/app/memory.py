"""Memory a training run will need, estimated before it starts, against what the machine has.

A setting that sizes memory (the minibatch, the captions sampled per image by self-critical
training, max_train) is refused in one line when its estimate exceeds the memory available,
instead of the kernel's OOM killer ending the run hours later without a message.

The estimates are rough upper-end figures of the largest arrays, not a measurement: one
training step keeps, for each caption row and time step, the scores, their softmax and
their gradient (3 V values) and the hidden activations of the forward and backward passes
(about 16 per unit of width and layer, and the attention weights of a transformer). A model
that attends over image regions also keeps, per row, its image's regions (cast to the
model's dtype) and their projection with its gradient, and per step the attention weights
and the context with their gradients. The data set's regions themselves are held in memory
for the whole run: their size is checked before they are read (check_regions).
Dimension letters: N captions of a step, T time steps, V vocabulary, W word vector size,
H hidden size, K layers, R regions per image (the data set's L), C region channels,
A attention width.
"""

import math
from pathlib import Path

from capmodel.datasets import format as fmt
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


def bytes_per_row(model, T, num_regions=0):
    """Estimated bytes one caption row of T steps takes in a training step (loss and backward);
    num_regions: the regions R per image of the data set, for a model that attends over them."""
    desc = model.describe()
    V = len(model.word_to_idx)
    W, H = desc.get("wordvec_dim", 0), desc.get("hidden_dim", 0)
    layers = desc.get("num_layers", 1)
    heads = desc.get("num_heads", 0)
    attention = heads * T  # a transformer's (heads, T) self-attention weights per step
    per_step = 3 * V + 16 * (W + H) * layers + 3 * attention * layers
    per_row = 0
    if getattr(model, "uses_regions", False):
        R, C = num_regions, desc.get("region_dim", 0) + desc.get("num_regions", 0)  # with their places
        if heads:  # cross-attention over the global vector and the R regions, in every layer
            per_step += 3 * heads * (R + 1) * layers
            per_row = R * C + 4 * (R + 1) * W * layers  # the regions; keys, values and their gradients
        else:  # alpha, context and their gradients per step; the regions, their projection and its gradient
            A = desc.get("attention_dim", H)
            per_step += 2 * (R + C)
            per_row = R * C + 2 * R * A
    return (per_step * T + per_row) * model.dtype.itemsize


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
    regions = data.get("train_regions")
    per_row = bytes_per_row(model, T, 0 if regions is None else regions.shape[1])
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


def check_regions(data_dir, available=None):
    """Raise ValueError when the data set's grids of regions (every split's {split}2014_grid.h5,
    float16, read whole into memory by training) would not fit in the memory available; a data
    set without them passes (its own check names what is missing)."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    layouts = fmt.grid_layouts(data_dir)  # a grid file missing or unreadable: the data set's check names it
    need = sum(math.prod(shape) * dtype.itemsize for shape, dtype in layouts.values())
    files = [fmt.grid_file(split) for split in layouts]
    if need > available:
        raise ValueError(f"data set {data_dir}: its regions ({', '.join(files)}) need about {_shown(need)} in memory, "
                         f"more than the {_shown(available)} available; make it with a smaller --grid or "
                         "--grid-pca, or train on a machine with more memory")
