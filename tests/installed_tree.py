"""A small fake site-packages, manual-page tree and stdlib reference for the installed_text domains
(datasel.data.installed_text): six packages (a module, METADATA and LICENSE each, two sharing one license text),
twelve roff pages (gzipped and plain) plus one generated template page to exclude, and six reference topics."""

from __future__ import annotations

import gzip
from pathlib import Path

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud field".split()


def _prose(i: int, n: int = 40) -> str:
    return " ".join(WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(n))


def _roff(i: int) -> str:
    return (f'.\\" generated page {i}\n.TH TOOL{i} 1\n.SH NAME\ntool{i} \\- does thing {i}\n.SH DESCRIPTION\n'
            f".B tool{i}\nreads \\fIfiles\\fR and {_prose(i)}.\n.PP\n.BR -v \" , \" --verbose\n{_prose(i + 50)}\n")


def installed_tree(root: Path) -> dict[str, str]:
    site, man = root / "site", root / "man"
    for p in range(6):
        pkg = site / f"pkg{p}"
        pkg.mkdir(parents=True)
        (pkg / "mod.py").write_text(
            f'"""{_prose(p + 10)}"""\n\n\ndef f{p}(x):\n    """{_prose(p + 20)}"""\n'
            + "".join(f"    y{j} = x * {j} + {p}\n" for j in range(30)) + "    return x\n")
        info = site / f"pkg{p}-1.{p}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pkg{p}\n\n# pkg{p}\n\n{_prose(p + 30, 60)}\n")
        # two packages ship the same license text: it must be read once
        (info / "LICENSE").write_text(_prose(99, 60) if p < 2 else _prose(p + 40, 60))
    (man / "man1").mkdir(parents=True)
    (man / "man7").mkdir()
    for i in range(8):
        (man / "man1" / f"tool{i}.1.gz").write_bytes(gzip.compress(_roff(i).encode()))
    for i in range(8, 12):
        (man / "man7" / f"tool{i}.7").write_text(_roff(i))
    (man / "man1" / "gen_x.1").write_text(".TH GEN 1\nGENERATED TEMPLATE " * 20)
    ref = root / "stdlib" / "pydoc_data"
    ref.mkdir(parents=True)
    topics = {f"topic{i}": _prose(i + 60, 50) for i in range(6)}
    (ref / "topics.py").write_text(f"# generated\ntopics = {topics!r}\n")
    return {"site_packages": str(site), "man": str(man), "stdlib": str(root / "stdlib")}
