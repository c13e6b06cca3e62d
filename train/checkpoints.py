"""Orbax checkpoints of a run: parameters, the full optimizer state, the step and the grain iterator state.

A run restarted in the same directory restores the latest checkpoint and continues bit-identically: the
step consumes no randomness (no dropout), and the data order is the iterator's saved position in the
seeded permutation. Saves are asynchronous; each waits for the previous one to finish.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str, keep: int = 0):
        """``keep``: how many of the latest checkpoints to keep (0: all)."""
        self.directory = directory
        self._manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            create=True, max_to_keep=keep or None))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        """Saves ``state`` and the data iterator's ``get_state()`` taken at the same step."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)))

    def restore_latest(self, state: Any, iterator: Any) -> tuple[Any, int]:
        """(state, step) of the latest checkpoint, the iterator moved to its position; (state, 0) if none."""
        step = self._manager.latest_step()
        if step is None:
            return state, 0
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
            iterator.set_state(restored.data)
        except Exception as e:  # orbax raises many types for unreadable files
            raise ValueError(f"the checkpoint at step {step} in {self.directory} cannot be read "
                             f"({type(e).__name__}: {e}); move it away to resume from an earlier one") from e
        return restored.state, step

    def close(self, failed: bool = False) -> None:
        """Waits for the last save. After a failure (``failed``) a save that cannot finish either is dropped
        quietly: its temporary folder is never read, and the first error is the one to report."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        except Exception as e:  # orbax and tensorstore error types: a full disk, a vanished folder
            if not failed:
                raise OSError(f"the last checkpoint in {self.directory} could not be written "
                              f"({str(e).splitlines()[0][:300]})") from e
