"""The install extras: no install line gets both faiss builds (they install one ``faiss`` module over each other),
and every documented line but the bare one brings exactly one.

The requirements are pyproject.toml's, as the Requires-Dist lines of the wheel's METADATA (what pip reads), resolved
the way pip does: a marker holds when it is true for the empty extra (the base requirements) or for one of the asked
extras, and a requirement on ``datasel[...]`` itself brings those extras in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
FAISS = {"faiss-cpu", "faiss-gpu"}
# the install lines the documentation gives: pip install -e '.[<extras>]'
DOCUMENTED = {"default": {"cpu"}, "gpu": {"gpu"}, "test (CI)": {"test"}, "tests on a GPU machine": {"gpu", "dev"},
              "benchmark": {"cpu", "benchmark"}}


@pytest.fixture(scope="module")
def metadata() -> tuple[list[Requirement], list[str]]:
    """The Requires-Dist lines of pyproject.toml as PEP 621 turns them into core metadata (what setuptools writes
    and pip reads): each optional dependency gets ``extra == "<name>"`` joined to its own marker."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, as CI runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, deps in project.get("optional-dependencies", {}).items():
        for dep in deps:
            r = Requirement(dep)
            marker = f'({r.marker}) and extra == "{extra}"' if r.marker else f'extra == "{extra}"'
            r.marker = None
            reqs.append(Requirement(f"{r}; {marker}"))
    return reqs, list(project.get("optional-dependencies", {}))


def resolve(reqs: list[Requirement], extras: set[str]) -> set[str]:
    """The project names ``pip install '.[extras]'`` asks for, self-references expanded."""
    names: set[str] = set()
    todo, seen = set(extras), set()
    while todo:
        seen |= todo
        asked, todo = todo, set()
        for r in reqs:
            if r.marker is not None and not any(r.marker.evaluate({"extra": e}) for e in {"", *asked}):
                continue
            if r.name == "datasel":
                todo |= set(r.extras) - seen
            else:
                names.add(r.name.lower())
    return names


def test_resolver_sees_the_old_negated_marker_bug() -> None:
    """The check below would have caught the bug: a base ``extra != 'gpu'`` holds for the empty extra."""
    reqs = [Requirement("faiss-cpu>=1.8; extra != 'gpu'"), Requirement("faiss-gpu>=1.8; extra == 'gpu'")]
    assert resolve(reqs, {"gpu"}) == FAISS


def test_no_install_line_gets_both_faiss_builds(metadata: tuple[list[Requirement], list[str]]) -> None:
    reqs, extras = metadata
    for extra in extras:  # any one extra alone
        assert len(resolve(reqs, {extra}) & FAISS) <= 1, extra
    assert {"cpu", "gpu", "test", "dev"} <= set(extras)
    for line, asked in DOCUMENTED.items():
        got = resolve(reqs, asked) & FAISS
        assert len(got) == 1, (line, asked, got)
    assert resolve(reqs, {"cpu"}) & FAISS == {"faiss-cpu"}
    assert resolve(reqs, {"test"}) & FAISS == {"faiss-cpu"}  # what `.ci/run` and the README's test line install
    assert resolve(reqs, {"gpu"}) & FAISS == {"faiss-gpu"}
    assert resolve(reqs, {"gpu", "dev"}) & FAISS == {"faiss-gpu"}
    assert {"pytest", "hypothesis"} <= resolve(reqs, {"test"}) & resolve(reqs, {"gpu", "dev"})
    assert not resolve(reqs, set()) & FAISS  # a bare install has none: datasel says which line to use


def test_missing_faiss_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from datasel.errors import DataselError
    from datasel.runtime import import_faiss

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(DataselError, match="faiss is not installed") as err:
        import_faiss()
    assert ".[cpu]" in err.value.fix and ".[gpu]" in err.value.fix
