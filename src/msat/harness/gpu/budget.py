"""Stages under one hard time limit.

A :class:`Stage` has a budget (the most it may take) and a minimum (below which it is not
worth starting). :class:`Runner` runs the selected stages in the order given, each with
``min(budget, time left)``; a stage that does not fit is skipped with the reason, a stage
that fails is recorded with its traceback, and the next one still runs. ``status.json``
is rewritten after every stage, so whatever finished is on disk if the run is killed.
Stages shrink their own work to fit: :class:`StageContext` tells them their deadline.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    budget_s: float
    min_s: float
    run: Callable[["StageContext"], dict]
    about: str = ""


@dataclass
class StageContext:
    out: Path
    deadline: float
    args: Any
    shared: dict = field(default_factory=dict)  # what one stage hands the next (decoded data, the trained net)
    clock: Callable[[], float] = time.monotonic

    def left(self) -> float:
        return self.deadline - self.clock()

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json(self.out / name, obj)


def write_json(path: Path, obj: Any) -> Path:
    """Write atomically: a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
    return path


class Runner:
    """Run stages within ``total_s`` seconds, keeping ``reserve_s`` back for the last write."""

    def __init__(self, out: Path, total_s: float, reserve_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if total_s <= reserve_s:
            raise ValueError(f"the time limit ({total_s} s) must exceed the reserve ({reserve_s} s)")
        self.out, self.clock = Path(out), clock
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = clock()
        self.end = self.start + total_s - reserve_s
        self.status: dict[str, Any] = {"time_limit_s": total_s, "stages": {}}

    def left(self) -> float:
        return self.end - self.clock()

    def run(self, stages: Sequence[Stage], selected: Optional[Sequence[str]], args: Any,
            shared: Optional[dict] = None) -> dict:
        names = [s.name for s in stages]
        unknown = [s for s in (selected or []) if s not in names]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the stages are {', '.join(names)}")
        shared = {} if shared is None else shared
        for st in stages:
            if selected and st.name not in selected:
                continue
            left = self.left()
            allowed = min(st.budget_s, left)
            rec: dict[str, Any] = {"budget_s": st.budget_s, "allowed_s": round(max(allowed, 0.0), 1)}
            if allowed < st.min_s:
                rec.update(status="skipped", reason=f"{max(left, 0):.0f} s left, the stage needs at least {st.min_s:.0f} s")
                log.warning("stage %s skipped: %s", st.name, rec["reason"])
            else:
                log.info("stage %s: up to %.0f s (%.0f s left in all)", st.name, allowed, left)
                t0 = self.clock()
                ctx = StageContext(self.out, t0 + allowed, args, shared, self.clock)
                try:
                    rec["result"] = st.run(ctx)
                    rec["status"] = "done"
                except Exception as exc:  # a failed stage must not cost the ones after it
                    rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                    log.error("stage %s failed: %s", st.name, rec["error"])
                rec["seconds"] = round(self.clock() - t0, 2)
                if rec["seconds"] > allowed + 1.0:
                    rec["overran_s"] = round(rec["seconds"] - allowed, 2)
            self.status["stages"][st.name] = rec
            self.status["elapsed_s"] = round(self.clock() - self.start, 2)
            write_json(self.out / "status.json", self.status)
        return self.status
