"""The report's page assets, read from the package's data files with ``importlib.resources``.

``style.css``, ``app.js`` (the page script), ``live.js`` (the live page's poller), and the
templates ``page.html``, ``live.html`` and ``message.html`` live beside this module; every page
inlines what it needs, so the written report stays one file that needs no network.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources

__all__ = ["APP_JS", "LIVE_JS", "STYLE", "asset", "fill"]


@functools.cache
def asset(name: str) -> str:
    """The text of the package data file ``cnnviz/report/<name>``.

    Raises:
        FileNotFoundError: If the file is not installed (a broken installation).
    """
    try:
        return resources.files("cnnviz.report").joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"cnnviz report asset {name!r} is missing from the installed package; reinstall "
            "cnnviz (its package data lists report/*.html, *.css and *.js)"
        ) from None


_MARK = re.compile(r"<!--cnnviz:([a-z_]+)-->")


def fill(template: str, parts: Mapping[str, str]) -> str:
    """``template`` with every ``<!--cnnviz:name-->`` replaced by ``parts[name]``, in one pass.

    The inserted parts are never scanned again, so they may contain anything.

    Raises:
        KeyError: If the template names a part that is not given.
    """
    return _MARK.sub(lambda m: parts[m.group(1)], asset(template))


STYLE = asset("style.css")
APP_JS = asset("app.js")
LIVE_JS = asset("live.js")
