"""The CS231n captioning model written in PyTorch, holding the weights of a capmodel model.

Used by bench_fair.py only. Dimension letters: N batch, T time, D feature, W word vector,
H hidden, V vocabulary. capmodel's LSTM gates are (i, f, o, g), torch's (i, f, g, o);
capmodel's GRU is torch's with the hidden-side bias fixed at zero. Torch's second bias
(bias_hh) is therefore frozen at zero (requires_grad False), so both frameworks train
exactly the same parameters.
"""

import numpy as np
import torch

NULL, START, END = 0, 1, 2


def gate_order(cell_type, H):
    """Columns of capmodel's Wx/Wh/b in torch's gate order."""
    if cell_type == "lstm":
        return np.r_[0:H, H : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H]
    return np.arange(3 * H)  # GRU: r, z, n in both


class TorchCaptioner(torch.nn.Module):
    """CaptioningRNN (LSTM or GRU) in PyTorch with the same parameters."""

    def __init__(self, params, cell_type, dtype):
        super().__init__()
        self.cell_type = cell_type
        D, H = params["W_proj"].shape
        V, W = params["W_embed"].shape
        self.H, self.V = H, V
        order = gate_order(cell_type, H)
        t = lambda a: torch.nn.Parameter(torch.tensor(np.ascontiguousarray(a), dtype=dtype))
        rnn = torch.nn.LSTM if cell_type == "lstm" else torch.nn.GRU
        self.proj = torch.nn.Linear(D, H).to(dtype)
        self.embed = torch.nn.Embedding(V, W).to(dtype)
        self.rnn = rnn(W, H, batch_first=True).to(dtype)
        self.vocab = torch.nn.Linear(H, V).to(dtype)
        with torch.no_grad():
            self.proj.weight = t(params["W_proj"].T)
            self.proj.bias = t(params["b_proj"])
            self.embed.weight = t(params["W_embed"])
            self.rnn.weight_ih_l0 = t(params["Wx"][:, order].T)
            self.rnn.weight_hh_l0 = t(params["Wh"][:, order].T)
            self.rnn.bias_ih_l0 = t(params["b"][order])
            self.rnn.bias_hh_l0 = t(np.zeros(len(order)))
            self.rnn.bias_hh_l0.requires_grad_(False)
            self.vocab.weight = t(params["W_vocab"].T)
            self.vocab.bias = t(params["b_vocab"])
        self.rnn.flatten_parameters()
        cell = torch.nn.LSTMCell if cell_type == "lstm" else torch.nn.GRUCell
        self.cell = cell(W, H).to(dtype)
        self.cell.weight_ih = self.rnn.weight_ih_l0  # shared, so sampling sees training updates
        self.cell.weight_hh = self.rnn.weight_hh_l0
        self.cell.bias_ih = self.rnn.bias_ih_l0
        self.cell.bias_hh = self.rnn.bias_hh_l0

    def trainable(self):
        return [p for p in self.parameters() if p.requires_grad]

    def loss(self, features, captions):
        """Masked cross-entropy summed over time, averaged over N (capmodel's loss).

        Like capmodel, it skips the padding: each caption runs up to its last scored word
        (pack_padded_sequence, the PyTorch idiom for padded captions), and only the
        packed positions are scored."""
        cin, cout = captions[:, :-1], captions[:, 1:]
        scored = cout != NULL
        T = scored.shape[1]
        lengths = torch.where(scored.any(dim=1), T - scored.flip(1).int().argmax(dim=1), 0)
        live = lengths > 0  # a caption without a scored word adds nothing
        h0 = self.proj(features[live]).unsqueeze(0)  # (1, N', H)
        state = (h0, torch.zeros_like(h0)) if self.cell_type == "lstm" else h0
        pack = torch.nn.utils.rnn.pack_padded_sequence
        x = pack(self.embed(cin[live]), lengths[live], batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(x, state)  # packed (P, H)
        target = pack(cout[live], lengths[live], batch_first=True, enforce_sorted=False).data
        ce = torch.nn.functional.cross_entropy(self.vocab(out.data), target, ignore_index=NULL, reduction="sum")
        return ce / features.shape[0]

    def grads_like_capmodel(self):
        """The gradients as capmodel names and lays them out (numpy arrays)."""
        inv = np.argsort(gate_order(self.cell_type, self.H))
        g = lambda p: p.grad.detach().numpy()
        return {
            "W_proj": g(self.proj.weight).T, "b_proj": g(self.proj.bias), "W_embed": g(self.embed.weight),
            "Wx": g(self.rnn.weight_ih_l0).T[:, inv], "Wh": g(self.rnn.weight_hh_l0).T[:, inv],
            "b": g(self.rnn.bias_ih_l0)[inv], "W_vocab": g(self.vocab.weight).T, "b_vocab": g(self.vocab.bias),
        }

    @torch.no_grad()
    def greedy(self, features, max_length):
        """Greedy captions with capmodel's rules: never <START>/<NULL>, <NULL> after <END>,
        and stop as soon as every caption has ended (as capmodel's greedy does)."""
        N = features.shape[0]
        h = self.proj(features)
        state = (h, torch.zeros_like(h)) if self.cell_type == "lstm" else h
        words = torch.full((N,), START, dtype=torch.long)
        out = torch.full((N, max_length), NULL, dtype=torch.long)
        done = torch.zeros(N, dtype=torch.bool)
        for t in range(max_length):
            state = self.cell(self.embed(words), state)
            h = state[0] if self.cell_type == "lstm" else state
            scores = self.vocab(h)
            scores[:, [START, NULL]] = -float("inf")
            words = scores.argmax(dim=1)
            words[done] = NULL
            out[:, t] = words
            done |= words == END
            if bool(done.all()):
                break
        return out
