"""dnalm.utils helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from dnalm.utils import json_safe


def test_json_safe_turns_non_finite_and_array_scalars_into_json():
    value = {"a": float("nan"), 2: (np.float32(1.5), np.int64(3), torch.tensor(2.5)), "b": [math.inf, {"c": -1.0}],
             "d": np.float64("-inf"), "e": "text"}
    out = json_safe(value)
    assert out == {"a": None, "2": [1.5, 3, 2.5], "b": [None, {"c": -1.0}], "d": None, "e": "text"}
    assert type(out["2"][1]) is int and type(out["2"][0]) is float
    json.dumps(out, allow_nan=False)  # strict JSON
