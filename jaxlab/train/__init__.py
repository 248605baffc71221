"""The training platform every trainer shares: the Task a trainer builds (state.py), the
typed loop options, stages and the one loop (loop.py), AdamW with its schedule (optim.py),
metric files (metrics.py) and reading finished runs back (runs.py)."""
from jaxlab.train.loop import Compiled, Options, RunResult, Stage, compile_step, options, run
from jaxlab.train.state import GradSync, Precision, Task, TrainState

__all__ = ["Compiled", "GradSync", "Options", "Precision", "RunResult", "Stage", "Task", "TrainState", "compile_step",
           "options", "run"]
