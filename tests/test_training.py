"""End-to-end smoke: least-action training of a small timm ResNet on real data (scikit-learn digits)."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import timm_lap


def _digits(n=512):
    data = load_digits()
    x = torch.tensor(data.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate((x - 0.3) / 0.4, size=16, mode="bilinear", align_corners=False)
    return x, torch.tensor(data.target[:n])


@pytest.mark.slow
def test_lap_training_lowers_task_loss_and_transport():
    torch.manual_seed(0)
    x, y = _digits()
    model = timm.create_model("resnet10t_lap", num_classes=10, in_chans=1)
    criterion = timm_lap.LeastActionLoss(nn.CrossEntropyLoss(), model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    multiplier = timm_lap.MultiplierScheduler(optimizer, criterion, tau=1.0)
    g = torch.Generator().manual_seed(0)
    history = []
    model.train()
    for _ in range(50):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = criterion(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((criterion.task_loss.item(), criterion.transport.item()))
    first_task, first_transport = history[0]
    last_task = sum(h[0] for h in history[-5:]) / 5
    last_transport = sum(h[1] for h in history[-5:]) / 5
    assert last_task < 0.5 * first_task
    assert last_transport < first_transport
    assert multiplier.lam.item() > 1.0
