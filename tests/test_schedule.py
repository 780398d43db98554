"""mohawk.schedule: the LR schedule's shape and the loss-spike guard (the loop that uses them: test_train.py)."""

import itertools

import pytest

from mohawk.schedule import SpikeGuard, lr_factor


def test_wsd_schedule_shape():
    f = [lr_factor(s, 100, "wsd", 0.1, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in f[10:80])
    assert f[80] == pytest.approx(1.0) and f[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in itertools.pairwise(f[80:]))


def test_cosine_schedule_shape():
    f = [lr_factor(s, 50, "cosine", 0.0, 0.0) for s in range(50)]
    assert f[0] == pytest.approx(1.0) and f[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(f))


def test_nan_loss_is_a_spike_even_with_factor_off(tmp_path):
    g = SpikeGuard(0.0, 4)
    for x in (1.0, 2.0, 3.0):
        g.accept(x)
    assert g.is_spike(float("nan")) and g.is_spike(float("inf")) and not g.is_spike(1e9)
    g = SpikeGuard(5.0, 4)
    for x in (1.0, 1.0, 1.0, 2.0, 100.0):
        g.accept(x)
    assert g.history == [1.0, 1.0, 2.0, 100.0]  # the window keeps the last 4; their median is 1.5
    assert not g.is_spike(7.0) and g.is_spike(8.0)
    assert not SpikeGuard(5.0, 32).is_spike(1e9)  # fewer than 8 losses seen: no median yet
