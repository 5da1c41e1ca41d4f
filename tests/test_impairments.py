import random
import statistics

import pytest

from testbed.emulation.link.impairments import Jitter, Loss

N = 200_000


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_symmetric_jitter_keeps_the_mean(distribution):
    jitter = Jitter(0.002, distribution, random.Random(1))
    draws = [jitter.sample() for _ in range(N)]
    assert abs(statistics.fmean(draws)) < 2e-5
    spread = statistics.pstdev(draws)
    expected = 0.002 if distribution == "normal" else 0.002 / 3**0.5
    assert spread == pytest.approx(expected, rel=0.02)


def test_pareto_jitter_is_one_sided_with_the_configured_mean():
    jitter = Jitter(0.002, "pareto", random.Random(2))
    draws = [jitter.sample() for _ in range(N)]
    assert min(draws) >= 0
    assert statistics.fmean(draws) == pytest.approx(0.002, rel=0.03)
    assert max(draws) > 10 * 0.002  # a heavy tail


def test_zero_jitter_is_exactly_zero():
    assert {Jitter(0, "normal", random.Random(0)).sample() for _ in range(10)} == {0.0}


@pytest.mark.parametrize("model", ["random", "gilbert_elliott"])
@pytest.mark.parametrize("pct", [1.0, 5.0])
def test_long_run_loss_rate(model, pct):
    loss = Loss(pct, model, burst=4.0, rng=random.Random(3))
    lost = sum(loss.lost() for _ in range(N))
    assert lost / N == pytest.approx(pct / 100, rel=0.08)


def bursts(flags):
    lengths, run = [], 0
    for flag in flags:
        if flag:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_gilbert_elliott_bursts_have_the_configured_mean_length():
    loss = Loss(5.0, "gilbert_elliott", burst=4.0, rng=random.Random(4))
    lengths = bursts([loss.lost() for _ in range(N)])
    assert statistics.fmean(lengths) == pytest.approx(4.0, rel=0.08)
    rand = Loss(5.0, "random", burst=4.0, rng=random.Random(4))
    assert statistics.fmean(bursts([rand.lost() for _ in range(N)])) < 1.2


def test_same_seed_same_losses():
    a = Loss(10, "gilbert_elliott", 3, random.Random(7))
    b = Loss(10, "gilbert_elliott", 3, random.Random(7))
    assert [a.lost() for _ in range(1000)] == [b.lost() for _ in range(1000)]


def test_netem_gemodel_parameters():
    p, r = Loss(5.0, "gilbert_elliott", burst=4.0, rng=random.Random()).gemodel_params()
    assert r == pytest.approx(25.0) and p / (p + r) == pytest.approx(0.05)
