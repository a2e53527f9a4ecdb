"""Independent references (numpy / plain Python, never the code under test) that several test files share."""
import math

import numpy as np


def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_standardize(z):
    z = np.asarray(z, dtype=np.float64)
    C = z.shape[-1]
    mean = z.sum(-1, keepdims=True) / C
    std = np.sqrt(((z - mean) ** 2).sum(-1, keepdims=True) / (C - 1))
    return (z - mean) / (std + 1e-7)


def np_kl(p, q):
    return float(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0))


def np_kd(s, t, T):
    return np.array([T * T * np_kl(np_softmax(ti / T), np_softmax(si / T)) for si, ti in zip(s, t)])


def binary_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
