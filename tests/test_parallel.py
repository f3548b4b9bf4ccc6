"""Tests of capmodel.kernels.parallel and of the decoders that use it."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from capmodel import decoding
from capmodel.kernels import parallel
from capmodel.classifiers.rnn import CaptioningRNN


def blas_threads():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_map_rows_equals_one_call_and_restores_blas_threads():
    rng = np.random.default_rng(0)
    rows, W = rng.standard_normal((101, 8)), rng.standard_normal((8, 5))
    before = blas_threads()
    seen = []

    def fn(block):
        seen.append(len(block))
        return block @ W, block.sum(axis=1)

    out, sums = parallel.map_rows(fn, rows, n_workers=3)
    assert sorted(seen) == [33, 34, 34]  # contiguous blocks covering every row once
    np.testing.assert_allclose(out, rows @ W, rtol=1e-12)
    np.testing.assert_allclose(sums, rows.sum(axis=1), rtol=1e-12)
    assert blas_threads() == before


@pytest.mark.parametrize("bad_block", [0, 1])
def test_map_rows_raises_the_error_of_any_block(bad_block):
    def fn(block):
        if block[0] == 50 * bad_block:
            raise ValueError(f"block {bad_block}")
        return block

    with pytest.raises(ValueError, match=f"block {bad_block}"):
        parallel.map_rows(fn, np.arange(100), n_workers=2)


def test_workers_follow_the_blas_threads_and_the_rows():
    with threadpool_limits(limits=3, user_api="blas"):
        assert parallel.workers(10_000) == 3
        assert parallel.workers(2 * parallel.MIN_ROWS) == 2
        assert parallel.workers(parallel.MIN_ROWS - 1) == 1
    with threadpool_limits(limits=1, user_api="blas"):
        assert parallel.workers(10_000) == 1


def test_each_block_runs_with_one_blas_thread():
    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        parallel.map_rows(lambda block: seen.append(tuple(blas_threads())) or block, np.arange(64), n_workers=2)
        assert blas_threads() and set(blas_threads()) == {2}
    assert len(seen) == 2 and all(set(s) == {1} for s in seen)


@pytest.mark.parametrize("method, options", [("greedy", {}), ("beam", {"beam_size": 3})])
@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_decoding_in_blocks_equals_decoding_the_whole_batch(monkeypatch, method, options, cell_type):
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, **{f"w{i}": i for i in range(4, 40)}}
    model = CaptioningRNN(vocab, input_dim=6, wordvec_dim=8, hidden_dim=10, cell_type=cell_type,
                          dtype=np.float64, seed=3)
    features = np.random.default_rng(1).standard_normal((70, 6))
    monkeypatch.setattr(parallel, "workers", lambda rows: 1)
    whole = decoding.decode(model, features, max_length=12, method=method, **options)
    monkeypatch.setattr(parallel, "workers", lambda rows: 3)
    blocks = decoding.decode(model, features, max_length=12, method=method, **options)
    assert np.array_equal(blocks, whole)
    assert (whole == 2).any() and (whole[:, -1] != 0).any()  # some captions end early, some do not


def test_overlapping_calls_put_the_blas_threads_back():
    import threading
    import time

    before = blas_threads()
    start = threading.Barrier(4)

    def caller():
        start.wait()
        for _ in range(10):
            parallel.map_rows(lambda block: (time.sleep(0.002), block)[1], np.arange(64), n_workers=2)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert blas_threads() == before


def test_a_failing_block_stops_the_others_at_their_next_step():
    import time

    steps = []

    def fn(block):
        if block[0] != 0:
            raise ValueError("second block failed")
        for i in range(2000):  # 20 s unless stopped
            parallel.raise_if_cancelled()
            steps.append(i)
            time.sleep(0.01)
        return block

    with pytest.raises(ValueError, match="second block failed"):
        parallel.map_rows(fn, np.arange(64), n_workers=2)
    assert len(steps) < 2000


def test_an_interrupted_caller_stops_the_other_blocks():
    import threading
    import time

    stopped = threading.Event()
    steps = []

    def fn(block):
        if block[0] == 0:  # the caller's own block
            time.sleep(0.05)
            raise KeyboardInterrupt
        try:
            for i in range(2000):
                parallel.raise_if_cancelled()
                steps.append(i)
                time.sleep(0.01)
        finally:
            stopped.set()
        return block

    with pytest.raises(KeyboardInterrupt):
        parallel.map_rows(fn, np.arange(64), n_workers=2)
    assert stopped.wait(10) and len(steps) < 2000


def test_bad_features_are_named_as_given():
    vocab = {"<NULL>": 0, "<START>": 1, "<END>": 2, "<UNK>": 3, "a": 4}
    model = CaptioningRNN(vocab, input_dim=8, wordvec_dim=4, hidden_dim=6, seed=0)
    for method in ("greedy", "beam", "temperature"):
        with pytest.raises(ValueError, match=r"got \(64, 7\)"):
            model.sample(np.zeros((64, 7)), method=method)
        with pytest.raises(ValueError, match=r"got \(\)"):
            model.sample(np.float64(1.0), method=method)
