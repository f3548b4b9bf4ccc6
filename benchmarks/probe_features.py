"""How much of a scene the shapes data set's features hold: a linear probe per attribute.

Run: python benchmarks/probe_features.py   (about 20 s; the docs quote its output)
"""

import numpy as np

from capmodel.datasets import features as feat
from capmodel.datasets import shapes

PROBE_ATTRIBUTES = ("color", "size", "shape", "row", "col")


def probe_features(num_images=2400, seed=11, ridge=10.0, train_fraction=0.75):
    """How well a linear (ridge-regression) probe reads each object attribute back from the
    features of single-object images: {attribute: (held-out accuracy, chance)}.

    tests/test_shapes.py holds the shapes data set to these figures.
    """
    scenes, images, _ = shapes.generate_split(num_images, seed, "train")
    single = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1]
    X = feat.extract(images[single]).astype(np.float64)
    n = int(train_fraction * len(X))
    X = (X - X[:n].mean(0)) / (X[:n].std(0) + 1e-6)
    X = np.hstack([X, np.ones((len(X), 1))])
    result = {}
    for attr in PROBE_ATTRIBUTES:
        y = np.array([str(scenes[i]["objects"][0][attr]) for i in single])
        names = sorted(set(y))
        Y = (y[:, None] == np.array(names)[None]).astype(float)
        W = np.linalg.solve(X[:n].T @ X[:n] + ridge * np.eye(X.shape[1]), X[:n].T @ Y[:n])
        accuracy = float(np.mean(np.argmax(X[n:] @ W, 1) == np.argmax(Y[n:], 1)))
        result[attr] = (accuracy, 1 / len(names))
    return result


if __name__ == "__main__":
    print("attribute  held-out accuracy  chance")
    for attr, (accuracy, chance) in probe_features().items():
        print(f"{attr:<9}  {accuracy:>17.1%}  {chance:>6.1%}")
