"""Reports of deep networks: grouped, collapsed, a layer picker, within the size bound."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from report_helpers import densenet_like, parse, write_deep

from cnnviz.report import build_report
from cnnviz.report.build import layer_budget
from cnnviz.report.groups import GROUP_FROM, MAX_GROUP, group_layers, strip_prefix


def test_groups_follow_blocks_and_pack_many_small_children() -> None:
    groups = group_layers(densenet_like())
    titles = [g.title for g in groups]
    assert titles[:5] == [
        "features · conv0, pool0",  # two single layers merged
        "features.denseblock1",
        "features.transition1",
        "features.denseblock2",
        "features.transition2",
    ]
    assert titles[5] == "features.denseblock3 · denselayer1–denselayer12"  # 48 layers, split
    assert all(len(g.layers) <= MAX_GROUP for g in groups)
    assert [n for g in groups for n in g.layers] == densenet_like()  # nothing lost, in order


def test_stages_of_an_efficientnet_and_flat_sequences_by_resolution() -> None:
    blocks = [1, 2, 2, 3, 3, 4, 1]
    names = ["conv_stem"] + [
        f"blocks.{i}.{j}.{c}"
        for i, n in enumerate(blocks)
        for j in range(n)
        for c in ("conv_pw", "conv_dw", "se.conv_reduce", "se.conv_expand", "conv_pwl")
    ]
    titles = [g.title for g in group_layers([*names, "conv_head"])]
    assert titles[1:4] == ["blocks.0.0", "blocks.1", "blocks.2"] and titles[-1] == "conv_head"
    flat = [f"features.{i}" for i in range(30)]
    sizes = {n: (224 >> (i // 6),) for i, n in enumerate(flat)}
    chunks = [g.layers for g in group_layers(flat, sizes)]
    assert [len(c) for c in chunks] == [6] * 5  # split where the resolution halves
    small = group_layers([f"c{i}" for i in range(GROUP_FROM)])
    assert len(small) == 1  # a small network is one group: the page is not grouped
    assert strip_prefix(["a.b.c"], ["a.b.c", "a.b.d"]) == ["c"]


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    names = densenet_like()[:64]
    run = tmp_path_factory.mktemp("deep") / "run"
    write_deep(run, names)
    out = build_report(run, plotly_js="cdn", progress=False, page_bytes=2_500_000)
    return out, out.read_text(), names


class _Nesting(HTMLParser):
    """Which group (if any) holds each layer section."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str | None]]] = []
        self.owner: dict[str, str | None] = {}
        self.open_groups: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.stack.append((tag, a))
        if tag == "details" and "group" in (a.get("class") or "") and "open" in a:
            self.open_groups.append(str(a.get("id")))
        if (
            tag == "section"
            and str(a.get("id", "")).startswith("layer-")
            and a["id"] != "layer-table"
        ):
            groups = [x for t, x in self.stack if t == "details" and x.get("class") == "group"]
            self.owner[str(a["id"])] = str(groups[-1]["id"]) if groups else None

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break


def test_deep_report_is_grouped_collapsed_and_has_a_picker(
    deep: tuple[Path, str, list[str]],
) -> None:
    _, html, names = deep
    nest = _Nesting()
    nest.feed(html)
    assert len(nest.owner) == len(names)
    assert all(g is not None for g in nest.owner.values())  # every layer is in a group
    groups = set(nest.owner.values())
    assert len(groups) >= 4 and nest.open_groups == []  # ...and every group starts closed
    assert 'id="layer-filter"' in html  # the picker
    page = parse(html)
    assert all(f"#{anchor}" in page.hrefs for anchor in nest.owner)  # the navigation lists all
    assert re.search(r'<li class="sub layer" data-name="features\.denseblock1\.denselayer2', html)
    assert re.search(r"in \d+ groups \(by module and stage\)", html)


def test_deep_report_fits_its_size_and_says_what_it_thinned(
    deep: tuple[Path, str, list[str]],
) -> None:
    out, html, names = deep
    assert out.stat().st_size <= 2_500_000 * 1.1
    budget = layer_budget(len(names), "cdn", 2_500_000)
    assert budget.figure < 100_000 and budget.patch_size == 16
    assert "logged events are not shown here" in html  # thinned, and said so
    # each layer's figure is thinned to its budget (four events would be four times larger)
    spec = re.findall(r'<script type="application/json" id="fig-[0-9][^"]*">(.*?)</script>', html)
    assert max(len(s) for s in spec) <= budget.figure


def test_a_small_network_is_not_grouped(full_run: Path, tmp_path: Path) -> None:
    html = build_report(full_run, tmp_path / "r.html", progress=False).read_text()
    assert '<details class="group"' not in html and 'id="layer-filter"' not in html
