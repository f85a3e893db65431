"""timm_lap.data.subsets: seeded class-balanced subsets, hold-outs, index subsets, label noise."""
from __future__ import annotations

import pytest
from conftest import LabelsOnly, counts
from hypothesis import given, settings
from hypothesis import strategies as st

from timm_lap.data import (
    class_balanced_subset,
    create_lap_dataset,
    dataset_num_classes,
    holdout_split,
    index_subset,
)


def test_balanced_subset_exact_counts(ten_classes):
    sub = class_balanced_subset(ten_classes, 100, seed=0)
    assert len(sub) == 100 and counts(sub.targets) == {c: 10 for c in range(10)}
    sub = class_balanced_subset(ten_classes, 105, seed=0)
    per_class = counts(sub.targets)
    assert sorted(per_class.values()) == [10] * 5 + [11] * 5
    assert sub.targets == [ten_classes.targets[i] for i in sub.indices]
    assert len(set(sub.indices)) == 105


def test_balanced_subset_small_class_gives_all_it_has():
    ds = LabelsOnly([0] * 2 + [1] * 50 + [2] * 50)
    per_class = counts(class_balanced_subset(ds, 30, seed=3).targets)
    assert per_class == {0: 2, 1: 14, 2: 14}


def test_balanced_subset_is_seeded(ten_classes):
    a = class_balanced_subset(ten_classes, 105, seed=5)
    b = class_balanced_subset(ten_classes, 105, seed=5)
    c = class_balanced_subset(ten_classes, 105, seed=6)
    assert a.indices == b.indices
    assert a.indices != c.indices


def test_balanced_subset_forwards_transform(ten_classes, digits):
    sub = class_balanced_subset(ten_classes, 20)
    fn = lambda x: x
    sub.transform = fn
    assert ten_classes.transform is fn and sub.transform is fn
    ten_classes.transform = None
    assert sub.transform is None
    digit_sub = class_balanced_subset(create_lap_dataset("sklearn/digits"), 30, seed=1)
    digit_sub.transform = lambda im: im.size
    assert digit_sub[0][0] == (8, 8)
    assert dataset_num_classes(digit_sub) == 10


def test_balanced_subset_errors(ten_classes):
    with pytest.raises(ValueError, match="smaller than the number of classes \\(10\\)"):
        class_balanced_subset(ten_classes, 9)
    with pytest.raises(ValueError, match="larger than the dataset \\(435 samples\\)"):
        class_balanced_subset(ten_classes, 436)
    with pytest.raises(ValueError, match="at least 1"):
        class_balanced_subset(ten_classes, 0)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 6), min_size=1, max_size=120),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_balanced_subset_property(labels, frac, seed):
    num_classes = len(set(labels))
    n = num_classes + int(frac * (len(labels) - num_classes))
    sub = class_balanced_subset(LabelsOnly(labels), n, seed=seed)
    assert len(sub) == n and len(set(sub.indices)) == n
    assert sub.targets == [labels[i] for i in sub.indices]
    per_class = counts(sub.targets)
    assert set(per_class) == set(labels)  # every class represented
    available = counts(labels)
    assert all(per_class[c] <= available[c] for c in per_class)
    # water filling: classes with samples left differ by at most one, and none holds more than that level + 1
    open_counts = [per_class[c] for c in per_class if per_class[c] < available[c]]
    if open_counts:
        assert max(open_counts) - min(open_counts) <= 1
        assert max(per_class.values()) <= min(open_counts) + 1
    if min(available.values()) >= -(-n // num_classes):
        assert max(per_class.values()) - min(per_class.values()) <= 1


def test_holdout_split_fraction_and_count(ten_classes):
    kept, held = holdout_split(ten_classes, 0.2, seed=0)
    assert len(held) == 87 and len(kept) == 435 - 87  # round(0.2 * 435)
    assert sorted(kept + held) == list(range(435))
    per_class, available = counts([ten_classes.targets[i] for i in held]), counts(ten_classes.targets)
    assert all(abs(per_class[c] - 0.2 * available[c]) < 1 for c in available)  # stratified
    _, held40 = holdout_split(ten_classes, 40, seed=0)
    per_class = counts([ten_classes.targets[i] for i in held40])
    assert len(held40) == 40 and all(abs(per_class[c] - 40 / 435 * available[c]) < 1 for c in available)


def test_holdout_split_is_seeded_and_independent_of_subset_stream(ten_classes):
    assert holdout_split(ten_classes, 0.3, seed=1) == holdout_split(ten_classes, 0.3, seed=1)
    assert holdout_split(ten_classes, 0.3, seed=1) != holdout_split(ten_classes, 0.3, seed=2)


def test_holdout_split_keeps_a_sample_of_every_class():
    ds = LabelsOnly([0] * 2 + [1] * 50)
    kept, held = holdout_split(ds, 0.9, seed=0)
    assert counts([ds.targets[i] for i in kept])[0] >= 1 and len(held) == round(0.9 * 52)


@pytest.mark.parametrize("size,match", [(0, "fraction in \\(0, 1\\) or a count"), (2.5, "neither a fraction"),
                                        (434, "at least one sample of each")])
def test_holdout_split_errors(ten_classes, size, match):
    with pytest.raises(ValueError, match=match):
        holdout_split(ten_classes, size)


def test_index_subset_keeps_targets(ten_classes):
    sub = index_subset(ten_classes, [3, 1, 4])
    assert sub.targets == [ten_classes.targets[i] for i in (3, 1, 4)] and len(sub) == 3


def test_with_label_noise_is_seeded_exact_and_never_keeps_the_true_class():
    from timm_lap.data import class_balanced_subset, load_digits_dataset, with_label_noise

    base = class_balanced_subset(load_digits_dataset("train"), 200, seed=3)
    noisy = with_label_noise(base, 0.3, seed=5)
    changed = [i for i, (a, b) in enumerate(zip(base.targets, noisy.targets)) if a != b]
    assert len(changed) == 60
    assert noisy.indices == base.indices and noisy.targets == with_label_noise(base, 0.3, seed=5).targets
    assert noisy.targets != with_label_noise(base, 0.3, seed=6).targets
    assert set(noisy.targets) <= set(base.targets)
    assert with_label_noise(base, 0.0, seed=5).targets == base.targets
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_label_noise(base, 1.0)
