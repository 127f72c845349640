"""The demo drops (data/raw) cleaned and split as the default run does, for tests and benchmarks."""

from __future__ import annotations

from ft_pipeline.settings import REPO_ROOT


def demo_split():
    """The demo drops cleaned and split as the default run does (holdout 10%, seed 0): `.train`, `.holdout`."""
    from ft_pipeline.data import cleaning, formats, splitting

    found, _ = formats.find_drops(REPO_ROOT / "data" / "raw")
    drops = {}
    for name, path in sorted(found.items()):
        parsed = formats.read_drop(path)
        drops[name] = cleaning.clean_records(
            cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, path))).kept
    return splitting.split_examples(drops, holdout_fraction=0.1, seed=0)
