"""Runs ``train.main`` and SIGKILLs it at a named moment: the fault injector of the kill campaign
(``tests/test_train_program.py::test_kill_campaign``).

  python tests/kill_point.py POINT N -- --config=configs/default.py --workdir=... [--config.FIELD=VALUE ...]

The process kills itself (SIGKILL: no handler, no cleanup, whatever is in flight is lost) at the N-th moment
of kind POINT that it meets:

  snapshot, spectra, forces, summary  inside that file's write: the temporary file is cut to half its length
                                      and the process dies before the rename that would commit it
  checkpoint                          inside orbax's checkpoint write: every file written, the commit rename
                                      of the step's folder not yet done
  step                                when the N-th training step of this process is done on the device
"""

import os
import signal
import sys

import jax

from train import train

WRITES = {"snapshot": "snapshots", "spectra": "spectra", "forces": "forces"}  # kill point → its folder


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(point: str, nth: int) -> None:
    met = [0]

    def now() -> bool:
        met[0] += 1
        return met[0] == nth

    if point in WRITES or point == "summary":
        replace = os.replace

        def killing_replace(src, dst, *args, **kwargs):
            folder, name = os.path.split(os.fspath(dst))
            ours = (name == "summary.json" if point == "summary"
                    else os.path.basename(folder) == WRITES[point] and name[:1].isdigit())
            if ours and now():
                os.truncate(src, os.path.getsize(src) // 2)
                _die()
            return replace(src, dst, *args, **kwargs)

        os.replace = killing_replace
    elif point == "checkpoint":
        rename = os.rename

        def killing_rename(src, dst, *args, **kwargs):
            folder, name = os.path.split(os.fspath(dst))
            if os.path.basename(folder) == "checkpoints" and name.isdigit() and now():
                _die()
            return rename(src, dst, *args, **kwargs)

        os.rename = killing_rename
    elif point == "step":
        make_train_step = train.make_train_step

        def killing_step_maker(*args, **kwargs):
            step = make_train_step(*args, **kwargs)

            def killing_step(state, batch):
                out = step(state, batch)
                if now():
                    jax.block_until_ready(out)
                    _die()
                return out

            return killing_step

        train.make_train_step = killing_step_maker
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, nth, separator, *flags = sys.argv[1:]
    assert separator == "--", "usage: kill_point.py POINT N -- FLAGS"
    _arm(point, int(nth))
    from absl import app

    from train import main
    sys.argv = ["train.main", *flags]
    app.run(main.main)
