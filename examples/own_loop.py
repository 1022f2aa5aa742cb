"""Your own PyTorch loop, following a budget policy: its LR schedule and its selection of samples.

    python examples/own_loop.py best_policy.yaml        # a policy exported by `tunebudget export`

The model, optimizer and loop are yours; tunebudget.Recipe says, as the budget is spent, what
learning-rate multiplier to use and which samples to train on next, and is told each step's losses.
"""

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

import tunebudget


def train_own(path: str) -> float:
    policy = tunebudget.load_policy(path)
    data = tunebudget.load_data(policy.task, policy.seed)  # tensors; or your own
    torch.manual_seed(policy.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(data.input_shape), 128), nn.ReLU(),
                          nn.Linear(128, data.num_outputs))
    t = policy.training
    decay = [p for p in model.parameters() if p.ndim > 1]  # no weight decay on biases
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0}],
                          lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0)
    recipe = tunebudget.Recipe(policy, n=len(data.train), head=lambda: model[-1].weight)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_lambda)  # LR follows the budget spent
    x, y = data.train.x, data.train.y
    model.train()
    for idx in recipe.batches():  # ends when the budget is spent
        if recipe.online:  # online selection: score the candidates, train on the best
            with torch.no_grad():
                out = model(x[idx])
            idx = recipe.choose(idx, F.cross_entropy(out, y[idx], reduction="none"), out)
        out = model(x[idx])
        losses = F.cross_entropy(out, y[idx], reduction="none")
        opt.zero_grad()
        (losses * recipe.weights(idx)).mean().backward()
        opt.step()
        recipe.step(idx, losses, out)  # charges the budget, records the scores selection reads
        sched.step()
    model.eval()
    with torch.no_grad():
        return float((model(data.test.x).argmax(1) == data.test.y).float().mean())


if __name__ == "__main__":
    print(f"test accuracy {train_own(sys.argv[1] if len(sys.argv) > 1 else 'search_spaces/digits_mlp.yaml'):.4f}")
