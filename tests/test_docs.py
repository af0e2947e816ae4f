"""Every command and code block of README.md and docs/ runs as written, on a small copy of the
demo's outputs (``demo_output/``: the synthetic sources, the manifest, the BBBC021-layout
shards), in one working folder, page after page in the site's order. A block preceded by
``<!-- docs-test: skip (reason) -->`` is not run; the skips are counted and need a reason."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN = {"bash": "bash", "sh": "bash", "python": "python"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")
SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->\s*$")


def pages() -> list[Path]:
    """README, then the site's pages in nav order, then pages not (yet) in the nav."""
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def flat(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from (flat(value) if isinstance(value, list) else [value])

    ordered = [REPO / "docs" / p for p in flat(nav)]
    rest = sorted(p for p in (REPO / "docs").rglob("*.md") if p not in ordered)
    return [REPO / "README.md", *ordered, *rest]


def blocks(path: Path) -> list[dict]:
    """Fenced blocks: ``{"lang", "code", "line", "skip": reason or None}``."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group("lang") and not _opens(lines, i):
            i += 1
            continue
        indent, start = m.group("indent"), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        code = "\n".join(x[len(indent):] if x.startswith(indent) else x for x in lines[i + 1:j])
        before = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.match(before)
        out.append({"lang": m.group("lang"), "code": code + "\n", "line": start + 1,
                    "skip": skip.group("reason").strip() if skip else None})
        i = j + 1
    return out


def _opens(lines: list[str], i: int) -> bool:
    """A bare ``` opens a block when a closing ``` follows (it is not a stray closer)."""
    return any(x.strip() == "```" for x in lines[i + 1:])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder holding ``demo_output/`` as the demo lays it out, small and fast."""
    from cytodata import demo
    from cytodata.shards import write

    root = tmp_path_factory.mktemp("docs")
    out = root / "demo_output"
    demo.make_sources(out, 0)
    demo.build_manifest(out, False)
    demo.write_source_manifest(out / "manifest", out / "manifest-bbbc021", "synth-bbbc021")
    write(out / "manifest-bbbc021", out / "shards" / "bbbc021", samples_per_shard=64,
          scheduler="synchronous", progress=False)
    return root


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("CYTODATA_PROGRESS", None)
    env.setdefault("OMP_NUM_THREADS", "1")  # one torch thread per process: the suite shares the cores
    return env


PAGES = pages()


def test_every_block_is_run_or_skipped_with_a_reason():
    counts = {"run": 0, "skipped": 0}
    for page in PAGES:
        for b in blocks(page):
            if b["lang"] not in RUN:
                continue
            if b["skip"] is None:
                counts["run"] += 1
            else:
                assert b["skip"], f"{page.relative_to(REPO)}:{b['line']}: a skip needs a reason"
                counts["skipped"] += 1
    print(f"docs blocks: {counts['run']} run, {counts['skipped']} skipped")
    assert counts["run"] >= 10 and counts["skipped"] <= counts["run"] * 2, counts
    assert any(b["lang"] == "bash" and b["skip"] is None for b in blocks(REPO / "README.md"))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_runs_as_written(page, work):
    env = _env()
    for b in blocks(page):
        if b["lang"] not in RUN or b["skip"] is not None:
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", b["code"]] if RUN[b["lang"]] == "bash" else \
            [sys.executable, "-c", b["code"]]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (f"{page.relative_to(REPO)}:{b['line']} ({b['lang']}) failed:\n"
                                      f"{b['code']}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n"
                                      f"{done.stderr[-3000:]}")
