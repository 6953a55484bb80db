"""The demo's own files: its rule file checks clean, and the images it makes in code are valid."""

from __future__ import annotations

import struct

from kit import check_png

from l7switch.config import load_config
from l7switch.devtools.demo import DEMO_CONFIG, GIF_1X1, make_ico, make_png


def test_demo_yaml_is_valid() -> None:
    cfg = load_config(DEMO_CONFIG)  # also runs the file's own tests: section, which must pass
    assert [lst.port for lst in cfg.listeners] == [8080]
    assert {name: [s.port for s in p.servers] for name, p in cfg.pools.items()} == {
        "html": [9101, 9102], "images": [9103, 9104], "cgi": [9105], "app": [9106, 9107],
        "files": [9108, 9109]}
    assert cfg.pools["html"].scheduler == "rr" and cfg.pools["images"].scheduler == "wlc"
    assert cfg.pools["files"].scheduler == "lc"
    assert cfg.default_pool == "html"


def test_demo_yaml_app_pool_is_sticky_and_self_tested() -> None:
    cfg = load_config(DEMO_CONFIG)
    persistence = cfg.pools["app"].persistence
    assert persistence is not None
    assert persistence.method == "cookie"
    assert (persistence.cookie_name, persistence.cookie_mode) == ("SRVID", "insert")
    # Every rule is covered by at least one self-test, so an edit that breaks one is refused.
    assert {t.rule for t in cfg.tests} >= {r.name for r in cfg.rules}
    assert {t.pool for t in cfg.tests} == set(cfg.pools)


def test_generated_images_are_valid() -> None:
    assert check_png(make_png(5)) == (5, 5)
    png = make_png()
    ico = make_ico(png)
    count, = struct.unpack("<H", ico[4:6])
    size, offset = struct.unpack("<II", ico[14:22])
    assert count == 1 and ico[offset:offset + size] == png
    assert GIF_1X1.startswith(b"GIF89a") and GIF_1X1.endswith(b";") and len(GIF_1X1) == 43
