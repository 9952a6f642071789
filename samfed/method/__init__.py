"""The SAM-Fed algorithm as plain functions over tensors and models, shared by every runner.

- `agreement`: per-pixel pseudo-labels and weights from teacher, global and local maps;
- `losses`: weighted BCE + soft Dice, two-class KD, sigmoid ramp-up;
- `augment`: weak (geometric, maps follow) and strong (colour) augmentation;
- `local_update.client_update`: one client's round;
- `aggregation.aggregate`: FedAvg or ensemble distillation (pluggable);
- `server`: global initialisation, client warm-up, baseline rounds;
- `methods`: what SAM-Fed, its ablations and the baselines switch on.

Importing `samfed.method` does not import torch; import the submodules.
"""
