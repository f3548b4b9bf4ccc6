"""Fast soft-attention cells: the packed sequence functions the attention models train with.

The computation of ``capmodel.attention``'s readable ``attention_cell_forward`` /
``attention_cell_backward`` (tests hold them equal), for packed sequences of different
lengths (the layout of ``capmodel.kernels.recurrent``: rows time-major, longest
sequence first, sizes[t] sequences running at step t). What makes it fast:

- the regions are projected once per call (regions Wr + b), the words' input
  projections x Wx + b in one matmul before the time loop, and every weight gradient in
  one matmul after it; each step steps the recurrent cores of kernels.recurrent;
- the (n, L, A) work of a step (add, tanh, scores; in the backward pass the recomputed
  tanh, its derivative and the sums) runs over blocks of a few rows that fit in the
  CPU's cache, so its passes over the data stay in cache instead of streaming
  (n, L, A) arrays through memory; the tanh is recomputed in the backward pass rather
  than stored (T times (N, L, A) would be hundreds of MB);
- sequences never interact, so the batch is split into interleaved groups (sequence i
  in group i mod G) that run the whole time loop in parallel threads, one per group,
  each with a one-thread BLAS (NumPy releases the GIL in ufuncs and BLAS calls); the
  groups' parameter gradients are summed in a fixed order, so results are
  deterministic for a given number of threads G (``capmodel.kernels.parallel.workers``);
- temporaries come from ``capmodel.kernels.buffers.scratch``: a training loss reuses
  the previous call's memory (each worker thread keeps its own arrays).

The regions are an input, not a parameter: the backward pass returns no gradient for
them. Dimension letters as in capmodel.attention, plus P packed rows, n0 initial states
and G groups.
"""

import contextvars
import queue
import threading

import numpy as np

from capmodel.kernels import parallel
from capmodel.kernels import recurrent as kr
from capmodel.kernels.buffers import scratch

BLOCK_BYTES = 1 << 19  # a (rows, L, A) block of about 512 KB stays in a core's L2 cache
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
CELLS = tuple(GATES)
# The parameters of an attention cell (capmodel.attention's module docstring has their shapes).
ATTENTION_KEYS = ("att.Wr", "att.b", "att.Wh", "att.w")
GATE_KEYS = ("att.Wg", "att.bg")
CELL_KEYS = ("Wx", "Wh", "b", "Wc")
PARAM_KEYS = CELL_KEYS + ATTENTION_KEYS + GATE_KEYS


def sigmoid(x, out=None):
    """0.5 * (1 + tanh(x / 2)), the formula of capmodel.layers.sigmoid (the same bits)."""
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def block_rows(L, A, itemsize):
    """Rows per block of the (rows, L, A) attention work."""
    return max(1, BLOCK_BYTES // (L * A * itemsize))


# ------------------------------------------------------------ one step's attention


def attend_rows(proj, ha, w, regions, alpha, context, work):
    """Attention weights and contexts of n rows, block by block (forward of one step).

    Inputs:
    - proj: Projected regions, of shape (n, L, A)
    - ha: h @ att.Wh of the rows, of shape (n, A)
    - w: Score vector, of shape (A,)
    - regions: Region features, of shape (n, L, D)
    - alpha: Array of shape (n, L) that receives the attention weights
    - context: Array of shape (n, D) that receives the contexts
    - work: Scratch array of shape (rows, L, A), rows >= 1: the block size
    """
    n, B = len(proj), len(work)
    for a in range(0, n, B):
        s = slice(a, min(a + B, n))
        t = work[: s.stop - a]
        np.add(proj[s], ha[s, None, :], out=t)
        np.tanh(t, out=t)
        e = np.matmul(t, w, out=alpha[s])  # (b, L) scores
        e -= e.max(axis=1, keepdims=True)
        np.exp(e, out=e)
        e /= e.sum(axis=1, keepdims=True)
        np.matmul(e[:, None, :], regions[s], out=context[s, None, :])


def attend_rows_backward(dcontext, dalpha, proj, ha, w, regions, alpha, dproj, dha, dw, work):
    """Backward of :func:`attend_rows` for n rows, block by block; the tanh is recomputed.

    Inputs:
    - dcontext: Gradient of the contexts, of shape (n, D)
    - dalpha: Gradient of alpha from elsewhere (the penalty), of shape (n, L), or None
    - proj, ha, w, regions, alpha: As in (and from) the forward pass
    - dproj: Array of shape (n, L, A) that the gradient of proj is added to
    - dha: Array of shape (n, A) that receives the gradient of ha
    - dw: Array of shape (A,) that the gradient of w is added to
    - work: Scratch array of shape (rows, L, A)
    """
    n, B = len(proj), len(work)
    for a in range(0, n, B):
        s = slice(a, min(a + B, n))
        t = work[: s.stop - a]
        de = np.matmul(regions[s], dcontext[s, :, None])[:, :, 0]  # (b, L) gradient of alpha
        if dalpha is not None:
            de += dalpha[s]
        de -= np.sum(alpha[s] * de, axis=1, keepdims=True)
        de *= alpha[s]  # through the softmax: gradient of the scores
        np.add(proj[s], ha[s, None, :], out=t)
        np.tanh(t, out=t)
        dw += de.reshape(-1) @ t.reshape(-1, t.shape[2])
        np.multiply(t, t, out=t)
        np.subtract(1, t, out=t)  # 1 - tanh^2
        t *= w
        t *= de[:, :, None]  # gradient of the pre-activation
        dproj[s] += t
        np.sum(t, axis=1, out=dha[s])


# ---------------------------------------------------------------- one group


def _check(cell, x, h0, regions, params, sizes):
    name = "attention_packed_forward"
    if cell not in CELLS:
        raise ValueError(f'{name}: unknown cell_type "{cell}"; choose one of {CELLS}')
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"{name}: params lack {', '.join(missing)}")
    if regions.ndim != 3 or regions.shape[0] != h0.shape[0]:
        raise ValueError(f"{name}: regions must have shape (n0={h0.shape[0]}, L, D), got {regions.shape}")
    steps = kr._check_packed_inputs(name, x, h0, params["Wx"], params["Wh"], params["b"], GATES[cell], sizes)
    H, D, A = h0.shape[1], regions.shape[2], params["att.w"].shape[0]
    k = GATES[cell]
    want = {"Wc": (D, k * H), "att.Wr": (D, A), "att.b": (A,), "att.Wh": (H, A), "att.w": (A,),
            "att.Wg": (H, D), "att.bg": (D,)}
    for key, shape in want.items():
        if params[key].shape != shape:
            raise ValueError(f"{name}: {key} must have shape {shape}, got {params[key].shape}")
    return steps


def _group_forward(cell, x, h0, regions, p, sizes):
    """The packed forward pass of one group of sequences, in the calling thread."""
    steps = kr._Steps(sizes, h0.shape[0])
    n0, H = h0.shape
    L, D = regions.shape[1:]
    A = p["att.w"].shape[0]
    P, dtype = steps.rows, np.result_type(x, h0, regions)
    proj = kr._project(regions, p["att.Wr"], p["att.b"], name="attention.proj")  # (n0, L, A)
    xa = kr._project(x, p["Wx"], p["b"], name="attention.xa")  # (P, kH), gets + gated @ Wc at each step
    Wag = np.concatenate([p["att.Wh"], p["att.Wg"]], axis=1)  # (H, A + D)
    hs = scratch(f"attention.{cell}.hs", (n0 + P, H), dtype)
    hs[:n0] = h0
    hag = scratch("attention.hag", (P, A + D), dtype)  # prev_h @ [att.Wh | att.Wg]
    alphas = scratch("attention.alphas", (P, L), dtype)
    context = scratch("attention.context", (P, D), dtype)
    beta = scratch("attention.beta", (P, D), dtype)
    gated = scratch("attention.gated", (P, D), dtype)
    work = scratch("attention.work", (block_rows(L, A, dtype.itemsize), L, A), dtype)
    if cell == "lstm":
        cs = scratch("attention.lstm.cs", (n0 + P, H), dtype)
        tcs = scratch("attention.lstm.tcs", (P, H), dtype)
        acts = scratch("attention.lstm.acts", (P, 4 * H), dtype)
        cs[:n0] = 0
        state = (cs, tcs, acts)
    elif cell == "gru":
        state = (scratch("attention.gru.gates", (P, 3 * H), dtype), scratch("attention.gru.has", (P, 3 * H), dtype))
    else:
        state = ()

    out = hs[n0:]
    for _, rows, prev in steps:
        n = rows.stop - rows.start
        hp = hs[prev]
        np.matmul(hp, Wag, out=hag[rows])
        attend_rows(proj[:n], hag[rows, :A], p["att.w"], regions[:n], alphas[rows], context[rows], work)
        b = np.add(hag[rows, A:], p["att.bg"], out=beta[rows])
        sigmoid(b, out=b)
        np.multiply(b, context[rows], out=gated[rows])
        xa[rows] += gated[rows] @ p["Wc"]  # the cell reads [x, gated] with [Wx; Wc]
        if cell == "lstm":
            cs, tcs, acts = state
            kr.lstm_core_forward(xa[rows], hp, cs[prev], p["Wh"], out=(acts[rows], cs[n0:][rows], tcs[rows],
                                                                        out[rows]))
        elif cell == "gru":
            gates, has = state
            kr.gru_core_forward(xa[rows], hp, p["Wh"], out=(gates[rows], has[rows], out[rows]))
        else:
            kr.rnn_core_forward(xa[rows], hp, p["Wh"], out=out[rows])
    cache = (cell, x, regions, p, steps, proj, hs, hag, alphas, context, beta, gated, state)
    return out, alphas, cache


def _group_backward(dh, dalphas, cache):
    """The packed backward pass of one group: (dx, dh0, grads)."""
    cell, x, regions, p, steps, proj, hs, hag, alphas, context, beta, gated, state = cache
    n0, H = steps.n0, hs.shape[1]
    L, D = regions.shape[1:]
    A = p["att.w"].shape[0]
    P, dtype, k = steps.rows, hs.dtype, GATES[cell]
    dxa = scratch("attention.dxa", (P, k * H), dtype)  # gradient of the cell's input side
    dhh = scratch("attention.dhh", (P, k * H), dtype) if cell == "gru" else dxa  # ... and hidden side
    dag = scratch("attention.dag", (P, A + D), dtype)  # gradient of hag
    dproj = scratch("attention.dproj", (n0, L, A), dtype)
    dproj.fill(0)
    dw = np.zeros(A, dtype)
    dgated = scratch("attention.dgated", (steps.sizes[0] if P else 0, D), dtype)
    work = scratch("attention.work_backward", (block_rows(L, A, dtype.itemsize), L, A), dtype)
    WhT, WcT, WagT = p["Wh"].T, p["Wc"].T, np.concatenate([p["att.Wh"], p["att.Wg"]], axis=1).T

    dnext_h = np.zeros((n0, H), dtype)  # a sequence's rows stay 0 until its last step
    dnext_c = np.zeros_like(dnext_h)
    for _, rows, prev in reversed(list(steps)):
        n = rows.stop - rows.start
        d = dnext_h[:n]
        d += dh[rows]
        if cell == "lstm":
            cs, tcs, acts = state
            kr.lstm_core_backward(d, dnext_c[:n], cs[prev], acts[rows], tcs[rows], dxa[rows], dprev_c=dnext_c[:n])
        elif cell == "gru":
            gates, has = state
            direct = kr.gru_core_backward(d, hs[prev], gates[rows], has[rows, 2 * H :], dxa[rows], dhh[rows])
        else:
            dxa[rows] = kr.rnn_core_backward(d, hs[n0:][rows])
        g = np.matmul(dxa[rows], WcT, out=dgated[:n])  # gradient of the gated context
        dgate = dag[rows, A:]
        np.multiply(g, context[rows], out=dgate)
        b = beta[rows]
        dgate *= b
        dgate *= 1 - b  # through the sigmoid
        g *= b  # now the gradient of the context
        attend_rows_backward(g, None if dalphas is None else dalphas[rows], proj[:n], hag[rows, :A], p["att.w"],
                             regions[:n], alphas[rows], dproj[:n], dag[rows, :A], dw, work)
        np.matmul(dhh[rows], WhT, out=d)
        d += dag[rows] @ WagT
        if cell == "gru":
            d += direct
    entering = steps.entering(hs, "attention.entering")  # (P, H) state entering each row
    grads = {"Wx": x.T @ dxa, "b": dxa.sum(axis=0), "Wh": entering.T @ dhh, "Wc": gated.T @ dxa}
    dWag = entering.T @ dag
    grads["att.Wh"], grads["att.Wg"] = dWag[:, :A], dWag[:, A:]
    grads["att.bg"] = dag[:, A:].sum(axis=0)
    grads["att.Wr"] = regions.reshape(-1, D).T @ dproj.reshape(-1, A)
    grads["att.b"] = dproj.sum(axis=(0, 1))
    grads["att.w"] = dw
    dx = np.matmul(dxa, p["Wx"].T)
    return dx, dnext_h, grads


# ------------------------------------------------------------- groups in threads


class _Workers:
    """The worker threads of one calling thread: worker i runs group i, so that a group's
    scratch arrays (thread-local, see capmodel.kernels.buffers) always live in the same
    thread and are reused from one call to the next; group 0 runs in the calling thread.
    Each calling thread has workers of its own (``worker_threads()``), so threads running one
    model's loss at once never share scratch arrays; they stop when it ends."""

    def __init__(self):
        self._queues = []

    def __del__(self):  # the calling thread ended: let its workers end too
        for q in self._queues:
            q.put(None)

    def _queue(self, i):
        while len(self._queues) < i:
            q = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(q,), daemon=True, name="capmodel-attention").start()
            self._queues.append(q)
        return self._queues[i - 1]

    @staticmethod
    def _serve(q):
        while (job := q.get()) is not None:
            fn, done = job
            fn()
            done.set()

    def run(self, fns):
        """fns[i]() in thread i, all at once; their results in order (the first error raised)."""
        if len(fns) == 1:
            return [fns[0]()]
        results, errors = [None] * len(fns), [None] * len(fns)

        def call(i):
            try:
                results[i] = fns[i]()
            except BaseException as e:  # re-raised in the caller's thread
                errors[i] = e

        events = []
        with parallel.one_blas_thread():
            for i in range(1, len(fns)):
                ctx = contextvars.copy_context()  # the caller's active Buffers
                done = threading.Event()
                self._queue(i).put((lambda i=i, ctx=ctx: ctx.run(call, i), done))
                events.append(done)
            call(0)
            for done in events:
                done.wait()
        for e in errors:
            if e is not None:
                raise e
        return results


_LOCAL = threading.local()


def worker_threads():
    """The calling thread's _Workers."""
    if not hasattr(_LOCAL, "workers"):
        _LOCAL.workers = _Workers()
    return _LOCAL.workers


def _groups(sizes, n0, G):
    """Per group g (sequences g, g + G, ...): (its sizes, its sequences, its rows in the packing)."""
    starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
    out = []
    for g in range(G):
        seqs = np.arange(g, n0, G)
        sizes_g = tuple(len(range(g, n, G)) for n in sizes)
        rows = np.concatenate([starts[t] + np.arange(g, n, G) for t, n in enumerate(sizes)] or
                              [np.zeros(0, np.int64)])
        out.append((sizes_g, seqs, rows))
    return out


def attention_packed_forward(cell_type, x, h0, regions, params, sizes, workers=None):
    """Run an attention cell forward over a packed batch of sequences.

    Packed as kernels.recurrent.rnn_packed_forward; the computation of
    capmodel.attention.attention_cell_forward (regions projected once, attention from
    the state entering each step, the gated context fed with the word vector).

    Inputs:
    - cell_type: 'rnn', 'lstm' or 'gru'
    - x: Packed word vectors, of shape (P, W), P = sum(sizes)
    - h0: Initial hidden states, of shape (n0, H), n0 >= sizes[0]
    - regions: Region features of the n0 sequences, of shape (n0, L, D)
    - params: Dict with the keys of capmodel.attention.PARAM_KEYS
    - sizes: Sequences running at each step, non-increasing, of length T
    - workers: Threads G (default: capmodel.kernels.parallel.workers(n0))

    Returns a tuple of:
    - h: Hidden state after every row, of shape (P, H)
    - alphas: Attention weights of every row, of shape (P, L)
    - cache: Values needed for the backward pass
    """
    steps = _check(cell_type, x, h0, regions, params, sizes)
    G = parallel.workers(h0.shape[0]) if workers is None else max(1, min(int(workers), h0.shape[0]))
    if G == 1:
        h, alphas, cache = _group_forward(cell_type, x, h0, regions, params, steps.sizes)
        return h, alphas, (None, [cache])
    groups = _groups(steps.sizes, h0.shape[0], G)
    results = worker_threads().run([
        (lambda s=s, q=q, r=r: _group_forward(cell_type, x[r], h0[q], regions[q], params, s))
        for s, q, r in groups])
    dtype = results[0][0].dtype
    h = scratch("attention.h", (steps.rows, h0.shape[1]), dtype)
    alphas = scratch("attention.alphas_all", (steps.rows, regions.shape[1]), dtype)
    for (_, _, r), (h_g, a_g, _) in zip(groups, results):
        h[r], alphas[r] = h_g, a_g
    return h, alphas, ((groups, h0.shape[0]), [c for _, _, c in results])


def attention_packed_backward(dh, dalphas, cache):
    """Backward pass of :func:`attention_packed_forward`.

    Inputs:
    - dh: Upstream gradients of all hidden states, of shape (P, H)
    - dalphas: Upstream gradients of the attention weights, of shape (P, L), or None
    - cache: Values from the forward pass

    Returns a tuple of:
    - dx: Gradient of the packed word vectors, of shape (P, W)
    - dh0: Gradient of the initial hidden states, of shape (n0, H)
    - grads: Dict of the gradients of every parameter (keys of PARAM_KEYS)
    """
    split, caches = cache
    if split is None:
        return _group_backward(dh, dalphas, caches[0])
    groups, n0 = split
    results = worker_threads().run([
        (lambda r=r, c=c: _group_backward(dh[r], None if dalphas is None else dalphas[r], c))
        for (_, _, r), c in zip(groups, caches)])
    dx = np.empty((dh.shape[0], results[0][0].shape[1]), results[0][0].dtype)
    dh0 = np.zeros((n0, dh.shape[1]), dh.dtype)
    grads = {}
    for (_, q, r), (dx_g, dh0_g, g) in zip(groups, results):
        dx[r], dh0[q] = dx_g, dh0_g
        for key, v in g.items():
            grads[key] = grads[key] + v if key in grads else v
    return dx, dh0, grads
