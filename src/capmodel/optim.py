"""First-order update rules, all of the form ``update(w, dw, config) -> (next_w, config)``.

- w: A numpy array giving the current weights.
- dw: A numpy array of the same shape as w giving the gradient of the loss with
  respect to w.
- config: A dictionary containing hyperparameter values such as learning rate and
  momentum, and the rule's running state (caches of moving averages). It is updated in
  place and also returned; defaults are set with config.setdefault.

The state arrays are kept in the dtype of w and updated in place, so a float32 model
stays float32 and a step makes no per-parameter temporaries beyond one scratch array.
"""

import numpy as np


def sgd(w, dw, config=None):
    """Vanilla stochastic gradient descent.

    config format:
    - learning_rate: Scalar learning rate.
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-2)
    w -= w.dtype.type(config["learning_rate"]) * dw
    return w, config


def sgd_momentum(w, dw, config=None):
    """Stochastic gradient descent with momentum.

    config format:
    - learning_rate: Scalar learning rate.
    - momentum: Scalar between 0 and 1 giving the momentum value.
    - velocity: A numpy array of the same shape as w and dw used to store a moving
      average of the gradients.
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("momentum", 0.9)
    v = config.get("velocity")
    if v is None:
        v = config["velocity"] = np.zeros_like(w)
    lr = w.dtype.type(config["learning_rate"])
    v *= w.dtype.type(config["momentum"])
    v -= lr * dw
    w += v
    return w, config


def rmsprop(w, dw, config=None):
    """RMSProp: a moving average of squared gradient values sets per-parameter step sizes.

    config format:
    - learning_rate: Scalar learning rate.
    - decay_rate: Scalar between 0 and 1 giving the decay rate for the squared gradient
      cache.
    - epsilon: Small scalar used for smoothing to avoid dividing by zero.
    - cache: Moving average of second moments of gradients.
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-2)
    config.setdefault("decay_rate", 0.99)
    config.setdefault("epsilon", 1e-8)
    cache = config.get("cache")
    if cache is None:
        cache = config["cache"] = np.zeros_like(w)
    f = w.dtype.type
    dr = config["decay_rate"]
    cache *= f(dr)
    cache += f(1 - dr) * dw * dw
    step = np.sqrt(cache)
    step += f(config["epsilon"])
    np.divide(dw, step, out=step)
    step *= f(config["learning_rate"])
    w -= step
    return w, config


def adam(w, dw, config=None):
    """Adam: moving averages of the gradient and its square, with bias correction.

    config format:
    - learning_rate: Scalar learning rate.
    - beta1: Decay rate for moving average of first moment of gradient.
    - beta2: Decay rate for moving average of second moment of gradient.
    - epsilon: Small scalar used for smoothing to avoid dividing by zero.
    - m: Moving average of gradient.
    - v: Moving average of squared gradient.
    - t: Iteration number.
    """
    if config is None:
        config = {}
    config.setdefault("learning_rate", 1e-3)
    config.setdefault("beta1", 0.9)
    config.setdefault("beta2", 0.999)
    config.setdefault("epsilon", 1e-8)
    config.setdefault("t", 0)
    m = config.get("m")
    if m is None:
        m = config["m"] = np.zeros_like(w)
    v = config.get("v")
    if v is None:
        v = config["v"] = np.zeros_like(w)
    f = w.dtype.type
    b1, b2 = config["beta1"], config["beta2"]
    config["t"] += 1
    t = config["t"]
    scratch = np.multiply(dw, f(1 - b1))
    m *= f(b1)
    m += scratch
    np.multiply(dw, dw, out=scratch)
    scratch *= f(1 - b2)
    v *= f(b2)
    v += scratch
    # w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    #    = [lr * sqrt(1 - b2^t) / (1 - b1^t)] * m / (sqrt(v) + eps * sqrt(1 - b2^t))
    c2 = np.sqrt(1 - b2**t)
    np.sqrt(v, out=scratch)
    scratch += f(config["epsilon"] * c2)
    np.divide(m, scratch, out=scratch)
    scratch *= f(config["learning_rate"] * c2 / (1 - b1**t))
    w -= scratch
    return w, config


RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}
DEFAULT_LEARNING_RATE = {"sgd": 1e-2, "sgd_momentum": 1e-2, "rmsprop": 1e-2, "adam": 1e-3}
