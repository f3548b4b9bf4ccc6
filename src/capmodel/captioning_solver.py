"""CaptioningSolver: trains a captioning model by minibatch stochastic gradient descent.

With only the CS231n keyword arguments it behaves exactly like CS231n's solver: one
``model.loss`` call per iteration, ``num_epochs * max(num_train // batch_size, 1)``
iterations, minibatches of captions drawn with replacement from the global NumPy random
state as ``sample_coco_minibatch`` draws them (capmodel.objectives.CrossEntropy), and the
learning rate multiplied by ``lr_decay`` after each epoch. Everything else is opt-in
(see ``__init__``).

The solver knows nothing of images or sentences: it runs one loop for every training
objective (capmodel.objectives; cross-entropy by default, self-critical training with
capmodel.scst.SelfCritical), which draws the minibatches from a data dict in the format of
``load_coco_data`` and decides the loss of a batch, the validation metric and what an
epoch iterates over. It needs a model with ``params`` and ``loss(features, captions)``
(the interface of capmodel.models) and, to validate, a callable
``validate(model) -> dict of scores`` (capmodel.validation.Validator by default).
"""

import math
import time

import numpy as np

from capmodel import checkpoints, optim, schedules
from capmodel.objectives import CrossEntropy
from capmodel.progress import clock
from capmodel.validation import Validator

CS231N_KWARGS = ("update_rule", "optim_config", "lr_decay", "batch_size", "num_epochs", "print_every", "verbose")
EXTRA_KWARGS = (
    "seed", "grad_clip", "validate", "val_size", "val_metric", "val_metric_images", "val_max_length",
    "patience", "lr_schedule", "lr_step_size", "lr_gamma", "warmup_iterations", "min_lr",
    "checkpoint_dir", "checkpoint_every", "progress", "max_iterations", "objective", "validate_start",
)


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss or gradient)."""


class CaptioningSolver:
    """Trains a captioning model.

    Example (as in the CS231n notebook):
        solver = CaptioningSolver(model, data, update_rule='adam', num_epochs=50,
                                  batch_size=25, optim_config={'learning_rate': 5e-3},
                                  lr_decay=0.995, verbose=True, print_every=10)
        solver.train()
        plt.plot(solver.loss_history)
    """

    def __init__(self, model, data, **kwargs):
        """Construct a new CaptioningSolver instance.

        Required arguments:
        - model: A model object with params, loss(features, captions) and sample()
        - data: A dictionary of training and validation data from load_coco_data

        Optional arguments (CS231n):
        - update_rule: Name of an update rule in capmodel.optim. Default 'sgd'.
        - optim_config: Hyperparameters for the update rule, e.g. learning_rate.
        - lr_decay: Learning rate multiplier applied after each epoch.
        - batch_size: Size of minibatches used for training.
        - num_epochs: Number of epochs to run for during training.
        - print_every: Print the training loss every print_every iterations.
        - verbose: Whether to print progress during training.

        Optional arguments (capmodel, all off by default):
        - seed: int; minibatches come from np.random.default_rng(seed) instead of the
          global NumPy state, making runs reproducible and resumable.
        - grad_clip: Rescale the gradients when their global L2 norm exceeds this.
        - validate: True to compute the validation loss (and val_metric) after every
          epoch into val_history, or a callable validate(model) -> dict of scores with
          a score(record) method or attribute-free (then -record["val_loss"] decides).
        - val_size: Number of validation captions for the loss (default 5000).
        - val_metric: 'bleu4' or 'cider', computed after every epoch on greedy captions
          of val_metric_images validation images (default 200).
        - val_max_length: Caption length for the validation metric (default 16).
        - patience: Stop when the validation score has not improved for this many
          epochs. The best parameters are restored at the end when validating.
        - lr_schedule: 'exponential' (per-epoch lr_decay, per iteration), 'step',
          'cosine' or 'constant'; replaces the CS231n in-place decay.
        - lr_step_size, lr_gamma: Epochs per step and the factor, for 'step'.
        - warmup_iterations: Linear warm-up of the learning rate.
        - min_lr: Final learning rate of 'cosine'.
        - checkpoint_dir: Directory for resumable checkpoints, a path or a
          capmodel.checkpoints.CheckpointDir (which says how many are kept; a path keeps
          two); train() claims it unless its owner already did, and resumes from the
          newest valid checkpoint found there.
        - checkpoint_every: Also checkpoint every this many iterations (besides every
          epoch end).
        - progress: Show a tqdm progress bar (when verbose).
        - max_iterations: Stop after this many iterations in total. When that ends the
          run inside an epoch, the last updates are validated too (when validating).
        - objective: The training objective (capmodel.objectives), default CrossEntropy():
          it draws each minibatch of batch_size units (captions, or images for
          capmodel.scst.SelfCritical) and returns (loss, grads, stats); an epoch is
          max(objective.epoch_size(data) // batch_size, 1) iterations; stats (a dict of
          floats) go to stats_history and the progress lines. Its metric is the
          validation metric when val_metric is not given.
        - validate_start: Validate the model before any update, as epoch 0, so that the
          start is kept when no epoch beats it (for a start that is a trained model, as
          with --init-from; default: the objective's fine_tunes; start_kept() tells afterwards). With the objective's
          collapse_fraction, training stops with TrainingError when the metric falls below
          that fraction of the start's.

        Training stops with TrainingError after a first epoch whose gradients were all
        exactly 0 (nothing could change the model; the objective's no_signal says why).
        """
        unknown = sorted(set(kwargs) - set(CS231N_KWARGS) - set(EXTRA_KWARGS))
        if unknown:
            raise ValueError(f"Unrecognized arguments {', '.join(unknown)}")
        self.model = model
        self.data = data
        self.update_rule_name = kwargs.get("update_rule", "sgd")
        if self.update_rule_name not in optim.RULES:
            raise ValueError(f'Invalid update_rule "{self.update_rule_name}"; choose one of {sorted(optim.RULES)}')
        self.update_rule = optim.RULES[self.update_rule_name]
        self.optim_config = dict(kwargs.get("optim_config", {}))
        self.lr_decay = kwargs.get("lr_decay", 1.0)
        self.batch_size = int(kwargs.get("batch_size", 100))
        self.num_epochs = int(kwargs.get("num_epochs", 10))
        self.print_every = int(kwargs.get("print_every", 10))
        self.verbose = bool(kwargs.get("verbose", True))

        self.seed = kwargs.get("seed")
        self.grad_clip = kwargs.get("grad_clip")
        self.objective = kwargs.get("objective") or CrossEntropy()
        validate = kwargs.get("validate", False)
        self.val_metric = kwargs.get("val_metric") or (self.objective.metric if validate is True else None)
        self.val_size = int(kwargs.get("val_size", 5000))
        self.val_metric_images = int(kwargs.get("val_metric_images", 200))
        self.val_max_length = int(kwargs.get("val_max_length", 16))
        self.validator = validate if callable(validate) else None
        self.validate = bool(validate) or self.val_metric is not None
        self.patience = kwargs.get("patience")
        self.lr_schedule = kwargs.get("lr_schedule")
        self.schedule_kwargs = {
            "step_size": int(kwargs.get("lr_step_size", 1)),
            "gamma": float(kwargs.get("lr_gamma", 0.1)),
            "warmup_iterations": int(kwargs.get("warmup_iterations", 0)),
            "min_lr": float(kwargs.get("min_lr", 0.0)),
        }
        ckpt = kwargs.get("checkpoint_dir")
        self.checkpoints = (ckpt if ckpt is None or isinstance(ckpt, checkpoints.CheckpointDir)
                            else checkpoints.CheckpointDir(ckpt))
        self.checkpoint_every = kwargs.get("checkpoint_every")
        self.progress = bool(kwargs.get("progress", False))
        self.max_iterations = kwargs.get("max_iterations")
        self.validate_start = bool(kwargs.get("validate_start", self.objective.fine_tunes))
        self._check_options()
        if self.validate and self.validator is None:
            self.validator = Validator(data, metric=self.val_metric, val_size=self.val_size,
                                       metric_images=self.val_metric_images, max_length=self.val_max_length)
        self._reset()

    def _check_options(self):
        if self.batch_size < 1 or self.num_epochs < 0:
            raise ValueError(f"batch_size must be >= 1 and num_epochs >= 0, got {self.batch_size}, {self.num_epochs}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.patience is not None and (not self.validate or int(self.patience) < 1):
            raise ValueError("patience must be >= 1 and needs validate=True or a val_metric")
        if self.lr_schedule is not None and self.lr_schedule not in schedules.SCHEDULES:
            raise ValueError(f'Invalid lr_schedule "{self.lr_schedule}"; choose one of {schedules.SCHEDULES}')
        if self.checkpoint_every is not None and int(self.checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        wanted = self.objective.metric
        if wanted is not None and self.val_metric not in (None, wanted):
            raise ValueError(f"val_metric must be {wanted} (or unset) with objective "
                             f"{type(self.objective).__name__}, got {self.val_metric!r}")

    def _reset(self):
        """Set up book-keeping variables for optimization."""
        self.epoch = 0
        self.iteration = 0
        self.best_score = None
        self.best_params = {}
        self.bad_epochs = 0
        self.finished = False
        self.loss_history = []
        self.val_history = []
        self.lr_history = []
        self.stats_history = []
        self.signal = False  # a gradient that was not exactly 0 was seen
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}
        # Without a seed, checkpoints or an objective that needs one, minibatches come
        # from the global NumPy state, as in CS231n.
        use_rng = self.seed is not None or self.checkpoints is not None or self.objective.generator_required
        self.rng = np.random.default_rng(self.seed) if use_rng else None

    # ------------------------------------------------------------- epochs

    def iterations_per_epoch(self):
        """Iterations of one epoch: the objective's units per epoch // batch_size, at least 1."""
        return max(self.objective.epoch_size(self.data) // self.batch_size, 1)

    def epoch_of(self, iteration):
        """The epoch (0-based) during which the given iteration (1-based) ran."""
        return (iteration - 1) // self.iterations_per_epoch()

    # ------------------------------------------------------------ one step

    def _base_lr(self):
        return self.optim_config.get("learning_rate", optim.DEFAULT_LEARNING_RATE[self.update_rule_name])

    def _step(self, t, num_iterations, iterations_per_epoch):
        """Make a single gradient update. This is called by train() and should not be called manually."""
        try:
            loss, grads, stats = self.objective(self.model, self.data, self.batch_size, self.rng)
        except FloatingPointError as e:
            raise TrainingError(f"iteration {t + 1}: {e}") from e
        if stats:
            self.stats_history.append(stats)
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
        self.signal = self.signal or norm != 0.0
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(loss) else "gradient"
            raise TrainingError(
                f"non-finite {what} at iteration {t + 1} (loss {loss}, gradient norm {norm}); "
                "try a lower learning rate or grad_clip"
            )
        factor = self.objective.divergence_factor
        if factor is not None and self.loss_history and loss > factor * self.loss_history[0]:
            raise TrainingError(
                f"training diverged at iteration {t + 1}: loss {loss:.6g} is more than {factor:g} "
                f"times the first iteration's {self.loss_history[0]:.6g}; try a lower learning rate or grad_clip"
            )
        self.loss_history.append(loss)
        if self.grad_clip is not None and norm > self.grad_clip:
            scale = self.grad_clip / norm
            for g in grads.values():
                g *= g.dtype.type(scale)
        if self.lr_schedule is not None:
            lr = schedules.learning_rate(t, self._base_lr(), self.lr_schedule,
                                         iterations_per_epoch=iterations_per_epoch,
                                         num_iterations=num_iterations, lr_decay=self.lr_decay,
                                         **self.schedule_kwargs)
            for config in self.optim_configs.values():
                config["learning_rate"] = lr
        for p, w in self.model.params.items():
            next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = next_w
            self.optim_configs[p] = next_config
        self.lr_history.append(self.optim_configs[next(iter(self.optim_configs))]["learning_rate"])

    def _stats_shown(self):
        """The objective's statistics of the last iteration, formatted for a progress line."""
        if not self.stats_history:
            return {}
        return {k: f"{v:.4f}" for k, v in self.stats_history[-1].items()}

    # ---------------------------------------------------------- validation

    def start_kept(self):
        """True when the start was validated (epoch 0) and no later validation beat it."""
        first = self.val_history[0] if self.val_history else {}
        return first.get("iteration") == 0 and not any(r["best"] for r in self.val_history[1:])

    def _metric(self):
        """The validation metric's name (the validator's own when one was given), or None."""
        return self.val_metric or getattr(self.validator, "metric", None)

    def _validate(self):
        try:
            scores = self.validator(self.model)
        except ValueError as e:
            raise TrainingError(f"epoch {self.epoch}: {e}") from e
        record = {"epoch": self.epoch, "iteration": self.iteration, **scores}
        score = self.validator.score(scores) if hasattr(self.validator, "score") else -scores["val_loss"]
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            self.best_params = {k: v.copy() for k, v in self.model.params.items()}
            self.bad_epochs = 0
            record["best"] = True
        else:
            self.bad_epochs += 1
            record["best"] = False
        self.val_history.append(record)
        if self.verbose:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
            print(f"(Epoch {self.epoch}) {shown}{' (best)' if record['best'] else ''}")
        metric, fraction = self._metric(), self.objective.collapse_fraction
        if fraction is not None and metric is not None and self.val_history[0]["iteration"] == 0:
            first, now = self.val_history[0][metric], record[metric]
            if now < fraction * first:
                raise TrainingError(f"epoch {self.epoch}: validation {metric} collapsed from {first:.4f} "
                                    f"to {now:.4f} (below {fraction:g} of the start); try a lower "
                                    "learning rate")

    # --------------------------------------------------------- checkpoints

    def _checkpoint_state(self):
        arrays = {f"params/{k}": v for k, v in self.model.params.items()}
        optim_scalars = {}
        for p, config in self.optim_configs.items():
            scalars = {}
            for k, v in config.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optim/{p}/{k}"] = v
                else:
                    scalars[k] = v
            optim_scalars[p] = scalars
        for k, v in self.best_params.items():
            arrays[f"best/{k}"] = v
        meta = {
            "kind": "training_state",
            "model": self.model.describe(),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "finished": self.finished,
            "best_score": self.best_score,
            "bad_epochs": self.bad_epochs,
            "loss_history": self.loss_history,
            "lr_history": self.lr_history,
            "val_history": self.val_history,
            "stats_history": self.stats_history,
            "signal": self.signal,
            "optim_scalars": optim_scalars,
            "solver_rng": None if self.rng is None else self.rng.bit_generator.state,
            "model_rng": self.model.rng.bit_generator.state if hasattr(self.model, "rng") else None,
        }
        return arrays, meta

    def save_checkpoint(self):
        """Write a resumable checkpoint of everything training depends on; prune old ones."""
        arrays, meta = self._checkpoint_state()
        self.checkpoints.save(self.iteration, arrays, meta)

    def _restore(self, arrays, meta):
        checkpoints.check_model_fits(self.model, meta, arrays, self.checkpoints.path)
        for k in self.model.params:
            self.model.params[k] = arrays[f"params/{k}"].copy()
        self.optim_configs = {}
        for p, scalars in meta["optim_scalars"].items():
            config = dict(scalars)
            prefix = f"optim/{p}/"
            for key, value in arrays.items():
                if key.startswith(prefix):
                    config[key[len(prefix):]] = value.copy()
            self.optim_configs[p] = config
        self.best_params = {k[5:]: v.copy() for k, v in arrays.items() if k.startswith("best/")}
        for key in ("iteration", "epoch", "finished", "best_score", "bad_epochs", "loss_history",
                    "lr_history", "val_history"):
            setattr(self, key, meta[key])
        self.stats_history = meta.get("stats_history", [])
        self.signal = meta.get("signal", True)
        if meta["solver_rng"] is not None:
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = meta["solver_rng"]
        if meta["model_rng"] is not None and hasattr(self.model, "rng"):
            self.model.rng.bit_generator.state = meta["model_rng"]

    def resume(self):
        """Load the newest valid checkpoint from checkpoint_dir; return True if one was found.

        A corrupt or truncated checkpoint is reported and the previous one is used; a
        checkpoint for another vocabulary or other shapes raises CheckpointError.
        """
        found = self.checkpoints.newest()
        if found is None:
            return False
        arrays, meta, path = found
        self._restore(arrays, meta)
        if self.verbose:
            print(f"Resumed from {path} at iteration {self.iteration}")
        return True

    # --------------------------------------------------------------- train

    def train(self):
        """Run optimization to train the model."""
        iterations_per_epoch = self.iterations_per_epoch()
        num_iterations = self.num_epochs * iterations_per_epoch
        if self.max_iterations is not None:
            num_iterations = min(num_iterations, int(self.max_iterations))
        if self.checkpoints is not None:
            if not self.checkpoints.claimed:
                self.checkpoints.claim()
            self.resume()
        bar = None
        if self.verbose and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=num_iterations, initial=self.iteration, unit="it", dynamic_ncols=True)
        if self.validate_start and self.validate and not self.val_history:
            self._validate()  # epoch 0: the start, kept unless an epoch beats it
            if self.checkpoints is not None:
                self.save_checkpoint()
        start, first = time.perf_counter(), self.iteration
        try:
            for t in range(self.iteration, num_iterations):
                if self.finished:
                    break
                self._step(t, num_iterations, iterations_per_epoch)
                self.iteration = t + 1
                if bar is not None:
                    bar.set_description(f"epoch {self.epoch + 1}/{self.num_epochs}", refresh=False)
                    bar.set_postfix(loss=f"{self.loss_history[-1]:.3f}", **self._stats_shown(), refresh=False)
                    bar.update(1)
                elif self.verbose and t % self.print_every == 0:
                    elapsed = time.perf_counter() - start
                    eta = elapsed / (t + 1 - first) * (num_iterations - t - 1)
                    shown = "".join(f", {k}: {v}" for k, v in self._stats_shown().items())
                    print("(Iteration %d / %d) loss: %f%s [elapsed %s, ETA %s]" % (
                        t + 1, num_iterations, self.loss_history[-1], shown, clock(elapsed), clock(eta)), flush=True)

                epoch_end = (t + 1) % iterations_per_epoch == 0
                if epoch_end:
                    self.epoch += 1
                    if self.epoch == 1 and not self.signal:
                        raise TrainingError(f"epoch 1: every gradient of the epoch was exactly 0, so training "
                                            f"cannot change the model: {self.objective.no_signal}")
                    if self.lr_schedule is None:
                        for k in self.optim_configs:
                            self.optim_configs[k]["learning_rate"] *= self.lr_decay
                    if self.validate:
                        self._validate()
                        if self.patience is not None and self.bad_epochs >= int(self.patience):
                            self.finished = True
                            if self.verbose:
                                print(f"Early stopping after epoch {self.epoch}: no improvement in {self.patience} epochs")
                if self.checkpoints is not None and (
                    epoch_end or self.finished or t + 1 == num_iterations
                    or (self.checkpoint_every and (t + 1) % int(self.checkpoint_every) == 0)
                ):
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.validate and self.val_history and self.val_history[-1]["iteration"] != self.iteration:
            # Stopped inside an epoch (max_iterations): the updates since the last validation
            # compete with the kept epoch instead of being thrown away for it.
            self._validate()
        if self.validate and self.best_params:
            for k, v in self.best_params.items():
                self.model.params[k] = v.copy()
