"""capmodel: RNN/LSTM/GRU and Transformer image captioning in NumPy, compatible with the CS231n captioning API."""

__version__ = "0.1.0"
