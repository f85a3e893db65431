"""timm_lap.analysis.stats: intervals, detectable differences, rank correlation with a bootstrap interval."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from timm_lap.analysis.stats import detectable_difference, paired_difference, spearman, spearman_bootstrap, t_interval


def test_t_interval_and_pairs():
    ci = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ci["half"] == pytest.approx(2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5), rel=1e-9)
    diff = paired_difference({0: 10.0, 1: 12.0, 2: 11.0, 7: 0.0}, {0: 9.0, 1: 10.0, 2: 11.0})
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(1.0)


def test_detectable_difference_matches_a_simulated_power_of_80_percent():
    sd, n = 2.0, 10
    mde = detectable_difference(sd, n)
    assert mde == pytest.approx((sps.t.ppf(0.975, 9) + sps.t.ppf(0.8, 9)) * sd / math.sqrt(n))
    # Simulate paired differences with true mean = mde: a two-sided t-test should reject about 80 % of the time.
    rng = np.random.default_rng(0)
    samples = rng.normal(mde, sd, size=(4000, n))
    pvalues = sps.ttest_1samp(samples, 0.0, axis=1).pvalue
    assert 0.75 < float((pvalues < 0.05).mean()) < 0.86
    assert math.isnan(detectable_difference(sd, 1)) and math.isnan(detectable_difference(math.nan, 5))
    assert detectable_difference(sd, 40) < mde  # more pairs detect smaller effects


def test_spearman_bootstrap_interval_brackets_rho():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = -x + rng.normal(scale=0.5, size=40)
    res = spearman_bootstrap(x, y, n_boot=500, seed=2)
    assert res["rho"] == pytest.approx(spearman(x, y)["rho"])
    assert -1.0 <= res["lo"] < res["rho"] < res["hi"] < 0.0
    assert res["n_boot"] == 500 and res == spearman_bootstrap(x, y, n_boot=500, seed=2)
    noise = spearman_bootstrap(rng.normal(size=40), rng.normal(size=40), n_boot=500)
    assert noise["lo"] < 0.0 < noise["hi"]
