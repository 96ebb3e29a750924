"""Text for scoring, distillation and the held-out fidelity check.

Default: Debian's ``wordnet-base`` glosses (~117k) and example sentences (~48k), which are
short everyday English; the held-out set is drawn from the example sentences ("Coffee and tea stimulate me"). Fidelity is judged on everyday
text, and distilling on a technical corpus transfers poorly to it (issue 2: 0.62 vs 0.81
mean cosine). To also train on longer inputs, a share of training items joins two to four
training sentences into one passage. Where WordNet is absent the job falls back to text
that ships with Python (``pydoc_data`` topics and standard-library docstrings) and says so.

The held-out split is chosen by a hash of each text, so it is the same whatever the order
or size of the corpus, and no held-out sentence ever enters a training passage.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Corpus", "CorpusError", "load_corpus", "WORDNET_DIR"]

WORDNET_DIR = Path("/usr/share/wordnet")
MIN_TRAIN_TEXTS = 64
_QUOTED = re.compile(r'"([^"]{12,300})"')


class CorpusError(ValueError):
    """The corpus is missing, unreadable or too small."""


@dataclass(frozen=True)
class Corpus:
    source: str  # wordnet | file | python-docs
    path: str | None
    train: list[str]
    heldout: list[str]
    sha256: str
    note: str = ""


def _wordnet_texts(root: Path) -> tuple[list[str], set[str]]:
    """Glosses and example sentences; the examples (everyday sentences) are the held-out candidates."""
    texts: list[str] = []
    examples: set[str] = set()
    for part in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1].strip()
            quoted = [m.strip() for m in _QUOTED.findall(gloss)]
            texts.extend(quoted)
            examples.update(quoted)
            definition = gloss.split(";")[0].strip().strip('"')
            if len(definition) >= 12:
                texts.append(definition)
    return texts, examples


def _python_doc_texts() -> list[str]:
    import pkgutil
    import pydoc_data.topics as topics

    texts: list[str] = []
    for body in topics.topics.values():
        texts.extend(p.strip() for p in re.split(r"\n\s*\n", body) if 20 <= len(p.strip()) <= 600)
    for mod in pkgutil.iter_modules():
        if mod.name.startswith("_"):
            continue
        for p in (mod.module_finder.path,) if hasattr(mod.module_finder, "path") else ():
            src = Path(p) / f"{mod.name}.py"
            if src.is_file() and src.stat().st_size < 400_000:
                for doc in re.findall(r'"""(.*?)"""', src.read_text(errors="replace"), flags=re.S):
                    texts.extend(s.strip() for s in re.split(r"\n\s*\n", doc) if 20 <= len(s.strip()) <= 600)
    return texts


def _is_heldout(text: str, per_mille: int) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 1000 < per_mille


def _split(
    texts: list[str], n_heldout: int, max_train: int, seed: int, candidates: set[str] | None = None
) -> tuple[list[str], list[str]]:
    unique = sorted(set(t for t in (s.strip() for s in texts) if t))
    pool = unique if candidates is None else sorted(candidates)
    if len(unique) < n_heldout + MIN_TRAIN_TEXTS:
        raise CorpusError(
            f"the corpus has {len(unique)} distinct texts; it needs at least {n_heldout + MIN_TRAIN_TEXTS} "
            f"({n_heldout} held out for fidelity and {MIN_TRAIN_TEXTS} to train on)"
        )
    per_mille = max(1, min(500, (2 * n_heldout * 1000) // len(pool) + 1))
    heldout_set = {t for t in pool if _is_heldout(t, per_mille)}
    heldout = sorted(heldout_set)
    train = [t for t in unique if t not in heldout_set]
    rng = random.Random(seed)
    rng.shuffle(heldout)
    rng.shuffle(train)
    heldout = heldout[:n_heldout]
    # Passages: a quarter of the items join 2-4 training sentences, so longer inputs are seen too.
    n_passages = len(train) // 4
    passages = [" ".join(rng.sample(train, rng.randint(2, 4))) for _ in range(n_passages)]
    train = (train + passages)[: max_train]
    rng.shuffle(train)
    return train, heldout


def load_corpus(path: str | Path | None, *, n_heldout: int, max_train: int, seed: int = 0) -> Corpus:
    """Read the corpus (``path``: one text per line; ``None``: WordNet, else Python's own docs)."""
    note = ""
    candidates: set[str] | None = None
    if path is not None:
        path = Path(path)
        try:
            texts = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise CorpusError(f"corpus file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CorpusError(f"cannot read corpus file {path}: {e}") from None
        source, where = "file", str(path)
    elif (WORDNET_DIR / "data.noun").is_file():
        texts, candidates = _wordnet_texts(WORDNET_DIR)
        source, where = "wordnet", str(WORDNET_DIR)
    else:
        texts, source, where = _python_doc_texts(), "python-docs", None
        note = ("WordNet (Debian package wordnet-base) is not installed; fell back to Python's own "
                "documentation, which is technical text: expect lower fidelity on everyday English")
    digest = hashlib.sha256("\n".join(sorted(set(texts))).encode()).hexdigest()
    train, heldout = _split(texts, n_heldout, max_train, seed, candidates)
    return Corpus(source, where, train, heldout, digest, note)
