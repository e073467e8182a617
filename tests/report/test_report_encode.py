"""The compact figure encoding and the script-safe JSON."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest
from report_helpers import decode

from cnnviz.report.encode import compact_figure, dumps_for_script


@pytest.mark.parametrize("bits", [8, 16])
def test_large_float_arrays_are_quantised_within_one_step(bits: int) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 30)).astype(np.float32)
    z[3, 4] = np.nan
    z[5, 6] = np.inf
    spec = compact_figure(go.Figure(go.Heatmap(z=z)), bits=bits)
    q = spec["data"][0]["z"]
    assert q["_q"] == bits and q["shape"] == [40, 30]
    back = decode(spec, spec.get("_shared", []))["data"][0]["z"]
    finite = np.isfinite(z)
    step = (z[finite].max() - z[finite].min()) / ((1 << bits) - 2)
    assert np.all(np.abs(back[finite] - z[finite]) <= step / 2 + 1e-6)
    assert np.isnan(back[3, 4]) and np.isnan(back[5, 6])  # non-finite values become gaps


def test_sparse_maps_are_compressed() -> None:
    z = np.zeros((64, 64), dtype=np.float32)
    z[10:20, 10:20] = 1.0
    q = compact_figure(go.Figure(go.Heatmap(z=z)), bits=8)["data"][0]["z"]
    assert q.get("z") == 1 and len(q["b"]) < 400


def test_small_arrays_are_rounded_lists_and_ints_stay_exact() -> None:
    fig = go.Figure(go.Scatter(x=np.arange(5), y=np.array([1 / 3, 2 / 3, np.nan, 1.0, 2.0])))
    fig.add_trace(go.Heatmap(z=np.arange(200).reshape(10, 20)))
    spec = compact_figure(fig)
    assert spec["data"][0]["y"] == [0.3333, 0.6667, None, 1.0, 2.0]
    assert spec["data"][0]["x"] == [0, 1, 2, 3, 4]
    z = spec["data"][1]["z"]
    assert z["dtype"] == "u1"  # Plotly's own typed-array form, smallest type
    assert "template" not in spec["layout"]


def test_repeated_lists_are_stored_once() -> None:
    labels = [f"row {i}" for i in range(50)]
    fig = go.Figure([go.Heatmap(z=np.ones((50, 2)), y=labels) for _ in range(5)])
    spec = compact_figure(fig)
    assert spec["_shared"][0] == labels or labels in spec["_shared"]
    refs = [t["y"] for t in spec["data"]]
    assert all(set(r) == {"_ref"} for r in refs)
    back = decode(spec, spec["_shared"])
    assert all(t["y"] == labels for t in back["data"])
    once = compact_figure(go.Figure(go.Heatmap(z=np.ones((50, 2)), y=labels)))
    assert "_shared" not in once and once["data"][0]["y"] == labels


def test_bits_must_be_8_or_16() -> None:
    with pytest.raises(ValueError, match="`bits`"):
        compact_figure(go.Figure(), bits=12)


def test_json_for_script_cannot_close_the_script() -> None:
    text = dumps_for_script({"a": "</script><!-- & \u2028", "n": float("nan")})
    for bad in ("</", "<!--", "<", ">", "&", "\u2028"):
        assert bad not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028", "n": None}
