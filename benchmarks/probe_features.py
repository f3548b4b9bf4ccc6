"""How much of a scene the shapes data set's features hold: a linear probe per attribute.

Run: python benchmarks/probe_features.py   (about 20 s; the docs quote its output)
"""

from capmodel.datasets import shapes

if __name__ == "__main__":
    print("attribute  held-out accuracy  chance")
    for attr, (accuracy, chance) in shapes.probe_features().items():
        print(f"{attr:<9}  {accuracy:>17.1%}  {chance:>6.1%}")
