"""Reading TensorBoard event files back offline, with TensorBoard's own reader (tests only)."""

from __future__ import annotations

from pathlib import Path


def read_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard reads the directory (every event file in it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def event_files(logdir: Path) -> list[Path]:
    """The event files in ``logdir``, sorted by name."""
    return sorted(logdir.glob("events.out.tfevents.*"))
