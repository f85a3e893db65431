"""Analysis tools on constructed flows whose answers are known in closed form."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from conftest import ResidualMLP
from torch.utils.data import DataLoader, TensorDataset

import timm_lap
from timm_lap.analysis.measure import (
    energy_profile,
    plot_energy_profile,
    plot_trajectories,
    same_width_stages,
    trajectories,
    transport_efficiency,
)
from timm_lap.blocks import find_blocks

pytest.importorskip("ot")
pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Shift(nn.Module):
    """Returns a fixed vector ``t`` for every sample."""

    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self.t = nn.Parameter(t.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.t.expand_as(x)


class ShiftBlock(nn.Module):
    """The residual block ``x + t``: every point moves by the same vector."""

    def __init__(self, t: torch.Tensor) -> None:
        super().__init__()
        self.shift = Shift(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift(x)


class ShiftFlow(nn.Module):
    """A stage of translation blocks followed by a linear head."""

    def __init__(self, shifts: list[torch.Tensor]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ShiftBlock(t) for t in shifts])
        self.head = nn.Linear(len(shifts[0]), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def points_loader(n: int, dim: int, batch_size: int, dtype: torch.dtype = torch.float64) -> DataLoader:
    x = torch.randn(n, dim, dtype=dtype)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def brute_force_w2(x0: np.ndarray, x1: np.ndarray) -> float:
    """W2^2 between equal-size uniform clouds: the best permutation (Birkhoff)."""
    cost = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)
    n = len(x0)
    return min(cost[range(n), list(perm)].mean() for perm in itertools.permutations(range(n)))


# ---------------------------------------------------------------- stages
def test_shift_blocks_are_found() -> None:
    model = ShiftFlow([torch.ones(3)] * 3)
    specs, _ = find_blocks(model)
    assert [s.name for s in specs] == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(s.shortcut is None for s in specs)


def test_same_width_stages_resnet18() -> None:
    model = timm.create_model("resnet18", num_classes=4)
    stages = same_width_stages(model, torch.randn(2, 3, 32, 32))
    # layerN.0 of N >= 2 downsamples through a projection: it belongs to no stage.
    assert stages == [["layer1.0", "layer1.1"], ["layer2.1"], ["layer3.1"], ["layer4.1"]]
    assert model.training  # the probe restored the train flag


def test_same_width_stages_mlp_and_explicit_tracker() -> None:
    model = ResidualMLP(width=5, depth=4)
    x = torch.randn(3, 4)
    assert same_width_stages(model, x) == [["blocks.0", "blocks.1", "blocks.2", "blocks.3"]]
    with timm_lap.track(model, blocks=["blocks.1", "blocks.2"]):
        assert same_width_stages(model, x) == [["blocks.1", "blocks.2"]]


def test_module_between_blocks_splits_the_stage() -> None:
    model = ResidualMLP(width=5, depth=4)
    model.blocks = nn.Sequential(model.blocks[0], model.blocks[1], nn.LayerNorm(5), model.blocks[2], model.blocks[3])
    stages = same_width_stages(model, torch.randn(3, 4))
    assert stages == [["blocks.0", "blocks.1"], ["blocks.3", "blocks.4"]]


# ------------------------------------------------------ transport efficiency
@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_constant_translation_is_optimal(blocks: int) -> None:
    t = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    model = ShiftFlow([t] * blocks).double()
    (row,) = transport_efficiency(model, points_loader(100, 3, batch_size=24), n=64, progress=False)
    assert row["stage"] == [f"blocks.{k}" for k in range(blocks)]
    assert row["blocks"] == blocks and row["n"] == 64
    step = float(t @ t)
    assert row["kinetic"] == pytest.approx(blocks * step, rel=1e-9)
    assert row["w2_squared"] == pytest.approx(blocks**2 * step, rel=1e-9)
    assert row["efficiency"] == pytest.approx(1.0, abs=1e-6)


def test_there_and_back_is_wasted_motion() -> None:
    t = torch.tensor([1.0, 2.0, -0.5, 0.3])
    model = ShiftFlow([t, -t])  # float32: x + t - t is x only up to rounding
    (row,) = transport_efficiency(model, points_loader(50, 4, 16, torch.float32), n=50, progress=False)
    assert row["kinetic"] == pytest.approx(2 * float(t @ t), rel=1e-5)
    assert row["w2_squared"] < 1e-9
    assert 0.0 <= row["efficiency"] < 1e-6


def test_random_residual_mlp_matches_hand_computation() -> None:
    model = ResidualMLP(width=3, depth=3).double()
    loader = points_loader(6, 4, batch_size=4)
    (row,) = transport_efficiency(model, loader, n=6, progress=False)

    x = torch.cat([xb for xb, _ in loader])
    with torch.no_grad():
        steps = [model.stem(x)]
        for block in model.blocks:
            steps.append(block(steps[-1]))
    kinetic = sum(float((b - a).pow(2).sum(1).mean()) for a, b in zip(steps, steps[1:]))
    w2 = brute_force_w2(steps[0].numpy(), steps[-1].numpy())
    assert row["kinetic"] == pytest.approx(kinetic, rel=1e-9)
    assert row["w2_squared"] == pytest.approx(w2, rel=1e-7, abs=1e-12)
    assert row["efficiency"] == pytest.approx(w2 / (3 * kinetic), rel=1e-7)
    assert 0.0 <= row["efficiency"] <= 1.0


def test_transport_efficiency_resnet18_every_stage() -> None:
    model = timm.create_model("resnet18", num_classes=4)
    images = torch.randn(5, 3, 32, 32)
    loader = DataLoader(TensorDataset(images, torch.zeros(5, dtype=torch.long)), batch_size=3)
    rows = transport_efficiency(model, loader, n=4, progress=False)
    assert [r["stage"] for r in rows] == same_width_stages(model, images[:2])
    for row in rows:
        assert row["n"] == 4
        assert len(row["block_kinetic"]) == row["blocks"]
        assert 0.0 <= row["efficiency"] <= 1.0


def test_no_stage_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no same-width stage"):
        transport_efficiency(model, points_loader(4, 4, 2, torch.float32), n=4, progress=False)


# ------------------------------------------------------------- energy profile
def hand_profile(model: ResidualMLP, loader: DataLoader, max_batches: int) -> dict[str, float]:
    sums = [0.0] * len(model.blocks)
    count = 0
    with torch.no_grad():
        for x, _ in itertools.islice(loader, max_batches):
            h = model.stem(x)
            for k, block in enumerate(model.blocks):
                nxt = block(h)
                sums[k] += float((nxt - h).pow(2).mean()) * len(x)
                h = nxt
            count += len(x)
    return {f"blocks.{k}": s / count for k, s in enumerate(sums)}


def test_energy_profile_untracked_model() -> None:
    model = ResidualMLP(width=6, depth=3)
    loader = points_loader(23, 4, batch_size=5, dtype=torch.float32)  # last batch is smaller
    profile = energy_profile(model, loader, max_batches=5, progress=False)
    expected = hand_profile(model, loader, max_batches=5)
    assert list(profile) == list(expected)
    for name in expected:
        assert profile[name] == pytest.approx(expected[name], rel=1e-6)
    assert timm_lap.get_tracker(model) is None
    assert model.training


def test_energy_profile_keeps_the_training_tracker() -> None:
    model = ResidualMLP(width=6, depth=3)
    criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    tracker = timm_lap.get_tracker(model)
    loader = points_loader(12, 4, batch_size=4, dtype=torch.float32)
    profile = energy_profile(model, loader, max_batches=2, progress=False)
    expected = hand_profile(model, loader, max_batches=2)
    assert profile == pytest.approx(expected, rel=1e-6)

    assert timm_lap.get_tracker(model) is tracker and criterion.tracker is tracker
    assert tracker.p == 2.0 and not tracker.track_eval
    assert tracker.blocks == ["blocks.0", "blocks.1", "blocks.2"]
    x, y = next(iter(loader))
    criterion(model(x), y).backward()  # the loss still sees the transport
    assert criterion.transport.item() > 0


# --------------------------------------------------------------- trajectories
def test_trajectories_positions_and_pca() -> None:
    from sklearn.decomposition import PCA

    model = ResidualMLP(width=5, depth=3).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    traj = trajectories(model, x)
    assert traj["stage"] == ["blocks.0", "blocks.1", "blocks.2"]
    assert traj["positions"].shape == (4, 20, 5)
    assert traj["projected"].shape == (4, 20, 2)

    with torch.no_grad():
        h = model.stem(x)
        np.testing.assert_allclose(traj["positions"][0], h.numpy())
        for k, block in enumerate(model.blocks, start=1):
            h = block(h)
            np.testing.assert_allclose(traj["positions"][k], h.numpy(), rtol=1e-12)

    ratio = traj["explained_variance_ratio"]
    assert ratio.shape == (2,) and ratio.sum() <= 1.0 + 1e-12 and ratio[0] >= ratio[1] >= 0
    pca = PCA(n_components=2).fit(traj["positions"].reshape(-1, 5))
    np.testing.assert_allclose(ratio, pca.explained_variance_ratio_, rtol=1e-8)
    reference = pca.transform(traj["positions"][0])
    signs = np.sign((reference * traj["projected"][0]).sum(0))  # principal axes are defined up to sign
    np.testing.assert_allclose(traj["projected"][0], reference * signs, atol=1e-9)


def test_trajectories_stage_choice() -> None:
    model = ResidualMLP(width=5, depth=4)
    model.blocks = nn.Sequential(model.blocks[0], nn.LayerNorm(5), *model.blocks[1:])
    x = torch.randn(6, 4)
    assert trajectories(model, x)["stage"] == ["blocks.2", "blocks.3", "blocks.4"]  # the longest
    assert trajectories(model, x, stage=0)["stage"] == ["blocks.0"]
    with pytest.raises(IndexError, match="out of range"):
        trajectories(model, x, stage=2)


# ---------------------------------------------------------------------- plots
def test_plots_are_written(tmp_path: Path) -> None:
    model = ResidualMLP(width=5, depth=3)
    x = torch.randn(16, 4)
    labels = (x[:, 0] > 0).long()
    traj = trajectories(model, x)
    out = plot_trajectories(traj, labels, tmp_path / "sub" / "traj.png", title="paths")
    profile = energy_profile(model, [(x, labels)], progress=False)
    bars = plot_energy_profile(profile, tmp_path / "profile.png")
    for path in (out, bars):
        assert path.exists() and path.stat().st_size > 1000
        assert path.read_bytes()[:8] == PNG_MAGIC


def test_start_and_end_markers_are_distinct_on_top_and_in_the_legend() -> None:
    from matplotlib.colors import to_rgba

    from timm_lap.analysis.plotting import draw_trajectories, new_figure

    points = np.zeros((3, 4, 2))
    points[1:] += 1e-3  # barely moving points: the start markers must still show
    ax = new_figure((4, 4)).add_subplot()
    draw_trajectories(ax, points, [0, 0, 1, 1])
    starts = [c for c in ax.collections if c.get_offsets().shape[0] and np.allclose(c.get_offsets(), 0)]
    ends = [c for c in ax.collections if c.get_offsets().shape[0] and np.allclose(c.get_offsets(), 1e-3)]
    assert len(starts) == len(ends) == 2
    assert all(s.get_zorder() > max(e.get_zorder() for e in ends) for s in starts)  # drawn over the ends
    for s in starts:  # hollow: an edge and no face, so the cross under it shows through
        assert s.get_edgecolors()[:, 3].min() > 0 and not s.get_facecolors()[:, 3].any()
    assert all(s.get_paths()[0] != e.get_paths()[0] for s, e in zip(starts, ends))  # circle vs cross
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["class 0", "class 1", "start (stage input)", "end (stage output)"]
    assert to_rgba(ax.get_legend_handles_labels()[0][2].get_edgecolors()[0]) == to_rgba("black")


def _start_circles(ax) -> list:
    return [c for c in ax.collections if c.get_offsets().shape[0] and not c.get_facecolors()[:, 3].any()]


def test_starts_in_a_small_cloud_get_an_enlarged_inset() -> None:
    from timm_lap.analysis.plotting import START_ZOOM_BELOW, draw_trajectories, new_figure

    rng = np.random.default_rng(0)
    starts = 0.01 * rng.standard_normal((40, 2))  # a stage that spreads a tight cloud far out (preact_flat9's look)
    ends = 10.0 * rng.standard_normal((40, 2))
    points = np.stack([starts, (starts + ends) / 2, ends])
    labels = np.arange(40) % 4
    ax = new_figure((5, 4)).add_subplot()
    inset = draw_trajectories(ax, points, labels)
    assert inset is not None and ax.child_axes == [inset]
    circles = _start_circles(inset)  # the starts, one hollow-circle collection per class, at their own scale
    assert len(circles) == 4
    assert np.allclose(np.sort(np.concatenate([c.get_offsets() for c in circles]), axis=0), np.sort(starts, axis=0))
    (x0, x1), (y0, y1) = inset.get_xlim(), inset.get_ylim()
    assert x0 <= starts[:, 0].min() <= starts[:, 0].max() <= x1 and y0 <= starts[:, 1].min() <= starts[:, 1].max() <= y1
    assert max(x1 - x0, y1 - y0) < START_ZOOM_BELOW * np.ptp(ends, axis=0).max()  # really enlarged
    assert "enlarged" in inset.get_title()
    assert len(_start_circles(ax)) == 4  # the main axes keep their starts too

    # Starts spread like the rest (two moons), or all in one point (nothing to enlarge): no inset.
    for spread_points in (np.stack([ends, ends + 1.0]), np.zeros((3, 40, 2)) + np.linspace(0, 1, 3)[:, None, None]):
        ax = new_figure((5, 4)).add_subplot()
        assert draw_trajectories(ax, spread_points, labels) is None and ax.child_axes == []


def test_the_inset_goes_to_the_emptiest_corner() -> None:
    from timm_lap.analysis.plotting import INSET_SIZE, _emptiest_corner

    rng = np.random.default_rng(1)
    cloud = rng.uniform(0, 1, (3, 200, 2))
    lower_right = (cloud[..., 0] > 0.6) & (cloud[..., 1] < 0.5)
    cloud[lower_right] = cloud[lower_right] * [1.0, 0.0] + [0.0, 1.0]  # moved to the top: the lower right is empty
    x, y = _emptiest_corner(cloud)
    assert x > 0.5 and y < 0.5 and x + INSET_SIZE <= 1.0


def test_plot_rejects_mismatched_labels(tmp_path: Path) -> None:
    traj = trajectories(ResidualMLP(width=5, depth=2), torch.randn(8, 4))
    with pytest.raises(ValueError, match="one entry per sample"):
        plot_trajectories(traj, [0, 1], tmp_path / "x.png")


def test_figures_live_in_plotting_and_keep_their_old_paths() -> None:
    import timm_lap.analysis as analysis
    from timm_lap.analysis import measure, plotting

    for name in ("draw_trajectories", "plot_energy_profile", "plot_trajectories"):
        assert getattr(measure, name) is getattr(plotting, name) is getattr(analysis, name)
    assert set(analysis.__all__) == {"draw_trajectories", "energy_profile", "validation_transport",
                                     "plot_energy_profile", "plot_trajectories", "same_width_stages", "trajectories",
                                     "transport_efficiency"}
    assert all(hasattr(analysis, name) for name in analysis.__all__)
