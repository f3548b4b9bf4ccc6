"""Cross-check of capmodel's attention LSTM (CaptioningRNN with attention="soft") against the
same model written in PyTorch.

The torch model below holds the same weights (copied; transposed where torch keeps Linear
weights as (out, in); LSTM gates reordered from capmodel's i, f, o, g to torch's i, f, g,
o) in torch.nn.Linear, nn.Embedding and nn.LSTMCell, written as PyTorch captioners with
attention are (Show, Attend and Tell; the per-step loop of the widely used tutorial
implementation): captions sorted by length, the batch shrinking as captions end, the
regions projected once. Loss (the penalty included), every gradient and greedy captions
must agree. benchmarks/bench_attention.py times this same torch model, so the benchmark
compares exactly the computation checked here.
"""

import numpy as np
import pytest
import torch

from capmodel.classifiers.rnn import CaptioningRNN
from capmodel.vocab import END, NULL, START

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def gate_order(H):
    """Columns of capmodel's LSTM weights in torch's gate order (i, f, g, o)."""
    return np.r_[0:H, H : 2 * H, 3 * H : 4 * H, 2 * H : 3 * H]


class TorchAttentionLSTM(torch.nn.Module):
    """Show, Attend and Tell's LSTM in PyTorch, with the weights of a capmodel model."""

    def __init__(self, model):
        super().__init__()
        D, W, H, V = model.input_dim, model.wordvec_dim, model.hidden_dim, len(model.word_to_idx)
        C, A = model.region_dim, model.attention_dim
        dtype = TORCH_DTYPES[model.dtype]
        self.null, self.start, self.end = model.word_to_idx[NULL], model.word_to_idx[START], model.word_to_idx[END]
        self.penalty, self.H = model.attention_penalty, H
        self.proj = torch.nn.Linear(D, H, dtype=dtype)
        self.embed = torch.nn.Embedding(V, W, dtype=dtype)
        self.att_regions = torch.nn.Linear(C, A, dtype=dtype)  # regions Wr + b
        self.att_hidden = torch.nn.Linear(H, A, bias=False, dtype=dtype)
        self.att_score = torch.nn.Linear(A, 1, bias=False, dtype=dtype)
        self.gate = torch.nn.Linear(H, C, dtype=dtype)
        self.cell = torch.nn.LSTMCell(W + C, H, dtype=dtype)  # reads [x_t, gated context]
        self.vocab = torch.nn.Linear(H, V, dtype=dtype)
        p = {k: torch.tensor(np.ascontiguousarray(v)) for k, v in model.params.items()}
        order = torch.from_numpy(gate_order(H))
        with torch.no_grad():
            for layer, w, b in ((self.proj, "W_proj", "b_proj"), (self.att_regions, "att.Wr", "att.b"),
                                (self.gate, "att.Wg", "att.bg"), (self.vocab, "W_vocab", "b_vocab")):
                layer.weight.copy_(p[w].T)
                layer.bias.copy_(p[b])
            self.embed.weight.copy_(p["W_embed"])
            self.att_hidden.weight.copy_(p["att.Wh"].T)
            self.att_score.weight.copy_(p["att.w"][None])
            self.cell.weight_ih.copy_(torch.cat([p["Wx"], p["Wc"]])[:, order].T)
            self.cell.weight_hh.copy_(p["Wh"][:, order].T)
            self.cell.bias_ih.copy_(p["b"][order])
            self.cell.bias_hh.zero_()
        self.cell.bias_hh.requires_grad_(False)  # capmodel's cells have one bias

    def trainable(self):
        return [q for q in self.parameters() if q.requires_grad]

    def grads_like(self):
        """The .grad of every parameter, as numpy arrays keyed and laid out like capmodel's."""
        g = lambda t: t.grad.detach().numpy()
        inv = np.argsort(gate_order(self.H))
        W = self.embed.weight.shape[1]
        wih = g(self.cell.weight_ih).T[:, inv]
        return {"W_proj": g(self.proj.weight).T, "b_proj": g(self.proj.bias), "W_embed": g(self.embed.weight),
                "Wx": wih[:W], "Wc": wih[W:], "Wh": g(self.cell.weight_hh).T[:, inv], "b": g(self.cell.bias_ih)[inv],
                "att.Wr": g(self.att_regions.weight).T, "att.b": g(self.att_regions.bias),
                "att.Wh": g(self.att_hidden.weight).T, "att.w": g(self.att_score.weight)[0],
                "att.Wg": g(self.gate.weight).T, "att.bg": g(self.gate.bias),
                "W_vocab": g(self.vocab.weight).T, "b_vocab": g(self.vocab.bias)}

    def step(self, x, h, c, regions, projected):
        """Attend with h, gate the context, step the LSTM cell: (h, c, alpha)."""
        scores = self.att_score(torch.tanh(projected + self.att_hidden(h).unsqueeze(1))).squeeze(2)  # (n, L)
        alpha = torch.softmax(scores, dim=1)
        context = torch.bmm(alpha.unsqueeze(1), regions).squeeze(1)  # (n, C)
        context = torch.sigmoid(self.gate(h)) * context
        h, c = self.cell(torch.cat([x, context], dim=1), (h, c))
        return h, c, alpha

    def loss(self, features, captions, regions):
        """Cross-entropy summed over the scored words, plus the doubly stochastic penalty,
        divided by N (capmodel's loss); each caption runs up to its last scored word."""
        N = features.shape[0]
        cin, cout = captions[:, :-1], captions[:, 1:]
        scored = cout != self.null
        T = scored.shape[1]
        lengths = torch.where(scored.any(dim=1), T - scored.flip(1).int().argmax(dim=1), 0)
        order = torch.argsort(-lengths, stable=True)
        lengths, cin, cout, scored = lengths[order], cin[order], cout[order], scored[order]
        regions = regions[order]
        h = self.proj(features[order])
        c = torch.zeros_like(h)
        x = self.embed(cin)
        projected = self.att_regions(regions)  # (N, L, A), once
        outs, targets, attended = [], [], torch.zeros(regions.shape[:2], dtype=h.dtype)
        for t in range(int(lengths.max()) if N else 0):
            n = int((lengths > t).sum())
            h, c, alpha = self.step(x[:n, t], h[:n], c[:n], regions[:n], projected[:n])
            keep = scored[:n, t]
            outs.append(h[keep])
            targets.append(cout[:n, t][keep])
            attended = attended + torch.nn.functional.pad(alpha * keep.unsqueeze(1), (0, 0, 0, N - n))
        ce = torch.nn.functional.cross_entropy(self.vocab(torch.cat(outs)), torch.cat(targets), reduction="sum")
        return (ce + self.penalty * ((1 - attended) ** 2).sum()) / N

    @torch.no_grad()
    def greedy(self, features, regions, max_length):
        """Greedy captions with capmodel's rules: never <START>/<NULL>, <NULL> after <END>,
        and stop as soon as every caption has ended."""
        N = features.shape[0]
        h = self.proj(features)
        c = torch.zeros_like(h)
        projected = self.att_regions(regions)
        words = torch.full((N,), self.start, dtype=torch.long)
        out = torch.full((N, max_length), self.null, dtype=torch.long)
        done = torch.zeros(N, dtype=torch.bool)
        for t in range(max_length):
            h, c, _ = self.step(self.embed(words), h, c, regions, projected)
            scores = self.vocab(h)
            scores[:, [self.start, self.null]] = -float("inf")
            words = scores.argmax(dim=1)
            words[done] = self.null
            out[:, t] = words
            done |= words == self.end
            if bool(done.all()):
                break
        return out


VOCAB = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 40)}}


def model_and_batch(dtype, seed=0, N=12, T=9, L=6, C=10):
    rng = np.random.default_rng(seed)
    model = CaptioningRNN(VOCAB, input_dim=8, wordvec_dim=12, hidden_dim=16, cell_type="lstm", dtype=dtype,
                          seed=seed, attention="soft", region_dim=C, attention_dim=14, attention_penalty=0.8)
    for k, v in model.params.items():  # O(1) weights: the gradients matter everywhere
        model.params[k] = (0.5 * rng.standard_normal(v.shape)).astype(dtype)
    captions = rng.integers(4, len(VOCAB), size=(N, T + 1))
    captions[:, 0] = 1
    for i, n in enumerate(rng.integers(0, T + 1, size=N)):
        captions[i, n] = 2 if n else 0
        captions[i, n + 1 :] = 0
    return model, rng.standard_normal((N, 8)).astype(dtype), captions, rng.standard_normal((N, L, C)).astype(dtype)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_loss_and_every_gradient_equal_pytorchs(dtype, tol):
    model, features, captions, regions = model_and_batch(dtype)
    loss, grads = model.loss(features, captions, regions=regions)
    torch_model = TorchAttentionLSTM(model)
    tloss = torch_model.loss(torch.from_numpy(features), torch.from_numpy(captions), torch.from_numpy(regions))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=tol)
    tgrads = torch_model.grads_like()
    assert set(tgrads) == set(grads)
    for k, g in grads.items():
        err = np.linalg.norm(g - tgrads[k]) / np.linalg.norm(tgrads[k])
        assert err < tol, k


def test_greedy_captions_equal_pytorchs():
    from capmodel import decoding

    model, features, _, regions = model_and_batch(np.float32, seed=1, N=20)

    class Bound:  # regions bound, as decoding.decode(..., regions=) passes them
        word_to_idx = model.word_to_idx

        def decoder(self, f):
            return model.decoder(f, regions)

    ours = decoding.greedy(Bound(), features, 12)
    theirs = TorchAttentionLSTM(model).greedy(torch.from_numpy(features), torch.from_numpy(regions), 12).numpy()
    np.testing.assert_array_equal(ours, theirs)
