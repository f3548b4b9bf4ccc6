"""Cross-check of capmodel's CaptioningTransformer against PyTorch's nn.TransformerDecoder.

The torch model below holds the same weights (copied, transposed where torch keeps
Linear weights as (out, in)) in torch.nn.Linear, nn.Embedding and nn.TransformerDecoder
(batch_first, post-norm, ReLU, dropout 0). Loss, every gradient and greedy captions must
agree. benchmarks/bench_fair.py times this same torch model, so the benchmark
compares exactly the computation checked here.
"""

import numpy as np
import pytest
import torch

from capmodel.classifiers.transformer import CaptioningTransformer
from capmodel.vocab import NULL, START

TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class TorchCaptioningTransformer(torch.nn.Module):
    """CS231n's CaptioningTransformer in PyTorch, with the weights of a capmodel model."""

    def __init__(self, model):
        super().__init__()
        D, W, V, F = model.input_dim, model.wordvec_dim, len(model.word_to_idx), model.hidden_dim
        dtype = TORCH_DTYPES[model.dtype]
        self.null, self.start = model.word_to_idx[NULL], model.word_to_idx.get(START)
        self.proj = torch.nn.Linear(D, W, dtype=dtype)
        self.embed = torch.nn.Embedding(V, W, dtype=dtype)
        layer = torch.nn.TransformerDecoderLayer(W, model.num_heads, dim_feedforward=F, dropout=0.0,
                                                 activation="relu", batch_first=True, norm_first=False, dtype=dtype)
        self.decoder = torch.nn.TransformerDecoder(layer, num_layers=model.num_layers)
        self.vocab = torch.nn.Linear(W, V, dtype=dtype)
        self.register_buffer("pe", torch.tensor(model.pe))
        p = {k: torch.tensor(np.ascontiguousarray(v)) for k, v in model.params.items()}
        with torch.no_grad():
            self.proj.weight.copy_(p["W_proj"].T)
            self.proj.bias.copy_(p["b_proj"])
            self.embed.weight.copy_(p["W_embed"])
            self.vocab.weight.copy_(p["W_vocab"].T)
            self.vocab.bias.copy_(p["b_vocab"])
            for i, tl in enumerate(self.decoder.layers):
                q = lambda k: p[f"layers.{i}.{k}"]
                for mine, theirs in (("self_attn", tl.self_attn), ("cross_attn", tl.multihead_attn)):
                    theirs.in_proj_weight.copy_(torch.cat([q(f"{mine}.W{x}").T for x in "qkv"]))
                    theirs.in_proj_bias.copy_(torch.cat([q(f"{mine}.b{x}") for x in "qkv"]))
                    theirs.out_proj.weight.copy_(q(f"{mine}.Wo").T)
                    theirs.out_proj.bias.copy_(q(f"{mine}.bo"))
                tl.linear1.weight.copy_(q("ffn.W1").T)
                tl.linear1.bias.copy_(q("ffn.b1"))
                tl.linear2.weight.copy_(q("ffn.W2").T)
                tl.linear2.bias.copy_(q("ffn.b2"))
                for n in (1, 2, 3):
                    getattr(tl, f"norm{n}").weight.copy_(q(f"norm{n}.gamma"))
                    getattr(tl, f"norm{n}").bias.copy_(q(f"norm{n}.beta"))

    def grads_like(self, model):
        """The .grad of every torch parameter, as numpy arrays keyed like model.params."""
        g = lambda t: t.grad.detach().numpy()
        out = {"W_proj": g(self.proj.weight).T, "b_proj": g(self.proj.bias), "W_embed": g(self.embed.weight),
               "W_vocab": g(self.vocab.weight).T, "b_vocab": g(self.vocab.bias)}
        W = model.wordvec_dim
        for i, tl in enumerate(self.decoder.layers):
            for mine, theirs in (("self_attn", tl.self_attn), ("cross_attn", tl.multihead_attn)):
                w, b = g(theirs.in_proj_weight), g(theirs.in_proj_bias)
                for j, x in enumerate("qkv"):
                    out[f"layers.{i}.{mine}.W{x}"] = w[j * W:(j + 1) * W].T
                    out[f"layers.{i}.{mine}.b{x}"] = b[j * W:(j + 1) * W]
                out[f"layers.{i}.{mine}.Wo"] = g(theirs.out_proj.weight).T
                out[f"layers.{i}.{mine}.bo"] = g(theirs.out_proj.bias)
            out[f"layers.{i}.ffn.W1"], out[f"layers.{i}.ffn.b1"] = g(tl.linear1.weight).T, g(tl.linear1.bias)
            out[f"layers.{i}.ffn.W2"], out[f"layers.{i}.ffn.b2"] = g(tl.linear2.weight).T, g(tl.linear2.bias)
            for n in (1, 2, 3):
                out[f"layers.{i}.norm{n}.gamma"] = g(getattr(tl, f"norm{n}").weight)
                out[f"layers.{i}.norm{n}.beta"] = g(getattr(tl, f"norm{n}").bias)
        return out

    def scores(self, features, captions_in):
        """Scores (N, T, V) of every position, as CS231n's forward()."""
        T = captions_in.shape[1]
        x = self.embed(captions_in) + self.pe[:T]
        memory = self.proj(features).unsqueeze(1)  # (N, 1, W)
        blocked = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # torch: True = may not attend
        return self.vocab(self.decoder(x, memory, tgt_mask=blocked))

    def loss(self, features, captions):
        """CaptioningRNN's loss: cross-entropy summed over non-<NULL> targets, averaged over N."""
        scores = self.scores(features, captions[:, :-1])
        target = captions[:, 1:]
        ce = torch.nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), target.reshape(-1),
                                               ignore_index=self.null, reduction="sum")
        return ce / features.shape[0]

    @torch.no_grad()
    def greedy(self, features, max_length):
        """Greedy decoding as CS231n's sample(): re-run the prefix at every step (torch's
        TransformerDecoder keeps no key/value cache); <START> and <NULL> are never chosen.
        Runs all max_length steps."""
        N = features.shape[0]
        words = torch.full((N, 1), self.start, dtype=torch.long)
        out = torch.empty((N, max_length), dtype=torch.long)
        memory = self.proj(features).unsqueeze(1)
        for t in range(max_length):
            x = self.embed(words) + self.pe[: t + 1]
            blocked = torch.triu(torch.ones(t + 1, t + 1, dtype=torch.bool), diagonal=1)
            h = self.decoder(x, memory, tgt_mask=blocked)[:, -1]
            scores = self.vocab(h)
            scores[:, [self.start, self.null]] = -float("inf")
            out[:, t] = scores.argmax(dim=1)
            words = torch.cat([words, out[:, t:t + 1]], dim=1)
        return out


def make_model(dtype, V=30, D=12, W=16, nh=4, layers=2, F=24, seed=0, weight_scale=None, end=True):
    vocab = {"<NULL>": 0, "<START>": 1, "<END>" if end else "w2": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, V)}}
    model = CaptioningTransformer(vocab, input_dim=D, wordvec_dim=W, num_heads=nh, num_layers=layers, hidden_dim=F,
                                  max_length=20, dtype=dtype, seed=seed)
    if weight_scale:  # larger weights than the 0.02 init, so every path carries signal
        rng = np.random.default_rng(seed + 1)
        for k, v in model.params.items():
            if "norm" not in k:
                model.params[k] = (weight_scale * rng.standard_normal(v.shape) / np.sqrt(v.shape[0])).astype(dtype)
    return model


def make_batch(model, N=5, T=9, seed=2):
    rng = np.random.default_rng(seed)
    V = len(model.word_to_idx)
    features = rng.standard_normal((N, model.input_dim)).astype(model.dtype)
    captions = rng.integers(4, V, size=(N, T + 1))
    captions[:, 0] = 1
    for i, n in enumerate(rng.integers(3, T + 1, size=N)):  # <END> then <NULL> padding
        captions[i, n] = 2
        captions[i, n + 1:] = 0
    return features, captions


def is_zero_gradient(name):
    """Parameters whose exact gradient is zero: key biases (a softmax ignores a constant
    added to a row of scores) and the cross-attention query/key projections (attention
    over the one memory position has weight 1 whatever the scores)."""
    return name.endswith(".bk") or any(name.endswith(f"cross_attn.{k}") for k in ("Wq", "bq", "Wk"))


# (dtype, loss tolerance, gradient tolerance): relative to the loss, and per parameter
# max |difference| / max |torch gradient|. Measured: float64 loss 4e-16, gradients 2e-15;
# float32 loss 1.4e-7, gradients 1.1e-6 (float32 rounds at 6e-8 and the two compute in
# different orders). A wrong term is off by > 1e-2.
TOLERANCES = [(np.float64, 1e-12, 1e-12), (np.float32, 1e-6, 1e-5)]


@pytest.mark.parametrize("dtype, loss_tol, grad_tol", TOLERANCES)
@pytest.mark.parametrize("weight_scale", [None, 1.0])
def test_loss_and_gradients_match_torch(dtype, loss_tol, grad_tol, weight_scale):
    torch.manual_seed(0)
    model = make_model(dtype, weight_scale=weight_scale)
    features, captions = make_batch(model)
    loss, grads = model.loss(features, captions)
    tmodel = TorchCaptioningTransformer(model)
    tloss = tmodel.loss(torch.tensor(features), torch.tensor(captions))
    tloss.backward()
    assert abs(loss - tloss.item()) <= loss_tol * abs(tloss.item())
    tgrads = tmodel.grads_like(model)
    assert set(tgrads) == set(grads)
    overall = max(np.abs(g).max() for g in tgrads.values())
    for k in grads:
        assert grads[k].dtype == model.dtype, k
        if is_zero_gradient(k):  # capmodel gives exact zeros, torch rounding noise
            assert not grads[k].any() and np.abs(tgrads[k]).max() <= grad_tol * overall, k
        else:
            assert np.abs(grads[k] - tgrads[k]).max() <= grad_tol * np.abs(tgrads[k]).max(), k


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_match_torch_position_by_position(dtype):
    model = make_model(dtype, weight_scale=1.0)
    features, captions = make_batch(model)
    tmodel = TorchCaptioningTransformer(model)
    with torch.no_grad():
        expected = tmodel.scores(torch.tensor(features), torch.tensor(captions[:, :-1])).numpy()
    state, step = model.decoder(features)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for t in range(captions.shape[1] - 1):
        state, scores = step(state, captions[:, t])
        assert np.abs(scores - expected[:, t]).max() <= tol * np.abs(expected).max(), f"position {t}"


def test_greedy_captions_match_torch():
    # without <END> no caption ends early, so capmodel's greedy runs all 12 steps like the torch loop
    model = make_model(np.float64, weight_scale=1.5, end=False)
    features, _ = make_batch(model, N=8)
    captions = model.sample(features, max_length=12)
    expected = TorchCaptioningTransformer(model).greedy(torch.tensor(features), 12).numpy()
    assert np.array_equal(captions, expected)
    assert len(np.unique(captions)) > 3  # the weights give varied captions, not one word
