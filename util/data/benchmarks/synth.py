"""synth: the built-in synthetic benchmark (``python -m tools.make_synth``), PASCAL's layout and folds, 20 colour +
shape classes."""
from __future__ import annotations

from pathlib import Path

from util.common.cli import tool_command
from util.data.benchmarks.base import FixedClasses, quoted

SYNTH_COLOURS = ("red", "green", "blue", "yellow", "purple")
SYNTH_SHAPES = ("circle", "square", "triangle", "star")


def _synth_classes() -> tuple[str, ...]:
    """20 colour+shape classes ordered so fold k (ids 5k+1..5k+5) holds colour j with shape (j+k) % 4.

    Every fold's novel classes then use all five colours and shapes that also occur among its 15
    base classes, so a class-name embedding carries real information about an unseen class.
    """
    return tuple(
        f"{colour} {SYNTH_SHAPES[(j + fold) % len(SYNTH_SHAPES)]}"
        for fold in range(4)
        for j, colour in enumerate(SYNTH_COLOURS)
    )


SYNTH_CLASSES = _synth_classes()


class Synth(FixedClasses):
    def preparation_command(self, data_root: str | Path) -> str:
        return tool_command("make_synth", root=data_root)

    def creation_command(self, data_root: str | Path) -> str:
        return self.preparation_command(data_root)

    def label_remedy(self, data_root: str | Path) -> str:
        return (f"delete {quoted(data_root)} and run {self.preparation_command(data_root)} again (with the arguments "
                "recorded in its synth_meta.json)")


SYNTH = Synth("synth", title="synth", names=SYNTH_CLASSES)
