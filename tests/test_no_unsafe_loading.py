"""Nothing in src/ unpickles without restriction: a checkpoint, run directory or dataset from someone else
must never be able to run code when vitlab reads it."""
from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vitlab"

FORBIDDEN = {
    r"weights_only\s*=\s*False": "torch.load that unpickles arbitrary objects",
    r"allow_pickle\s*=\s*True": "numpy loading that unpickles arbitrary objects",
    r"\bpickle\.loads?\(": "unrestricted pickle.load (use a pickle.Unpickler with find_class)",
    r"\b(cPickle|dill|joblib)\.load": "unrestricted unpickling",
    r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)": "torch.load without weights_only=True",
}


def test_no_unrestricted_unpickling_in_src() -> None:
    hits = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        for pattern, why in FORBIDDEN.items():
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                hits.append(f"{path.relative_to(SRC)}:{line}: {why}")
    assert not hits, "\n".join(hits)


def test_the_check_catches_what_it_should() -> None:
    """The patterns must fire on the calls they forbid (a grep that matches nothing proves nothing)."""
    bad = ["torch.load(p, weights_only=False)", "torch.load(p)", "np.load(p, allow_pickle=True)",
           "pickle.loads(raw)", "pickle.load(handle)"]
    for line in bad:
        assert any(re.search(pattern, line) for pattern in FORBIDDEN), line
    assert not any(re.search(pattern, "torch.load(p, map_location='cpu', weights_only=True)") for pattern in FORBIDDEN)
