"""Many ``timm-lap train`` runs, resumable and in parallel: the engine behind ``timm-lap compare``.

    results = ResultsFile("runs.jsonl", key_fields=("method", "seed"))
    run_cells([{"method": "lap", "seed": 0, "argv": ["--dataset", "sklearn/digits", "--lap", ...]}], results,
              jobs=2, threads=1)

A *cell* is a dict of JSON values plus ``argv`` (``timm-lap train`` flags). Each finished cell is appended to the
JSONL file as one row (the cell's fields and the run's metrics), so a rerun skips it and a killed sweep loses at
most the cells in flight.
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

__all__ = ["ResultsFile", "run_cell", "run_cells"]

Cell = dict[str, Any]


class ResultsFile:
    """Append-only JSONL file of finished runs; a run is identified by the values of ``key_fields``."""

    def __init__(self, path: str, key_fields: Sequence[str]) -> None:
        if not key_fields:
            raise ValueError("ResultsFile: key_fields must not be empty")
        self.path = path
        self.key_fields = tuple(key_fields)

    def key(self, row: dict[str, Any]) -> tuple:
        missing = [k for k in self.key_fields if k not in row]
        if missing:
            raise KeyError(f"ResultsFile: row lacks key field(s) {missing}")
        return tuple(json.dumps(row[k], sort_keys=True) for k in self.key_fields)

    def rows(self) -> list[dict[str, Any]]:
        """All rows; a truncated last line (a process killed mid-write) is ignored."""
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def done(self) -> set[tuple]:
        return {self.key(r) for r in self.rows() if all(k in r for k in self.key_fields)}

    def append(self, row: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Mute timm's and timm-lap's info logs for one run (a sweep prints its own progress), then restore them."""
    loggers = [logging.getLogger(name) for name in ("timm", "timm_lap", "timm_lap.train")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_cell(argv: Sequence[str], threads: int | None = None, transport_images: int = 2048) -> dict[str, Any]:
    """Train once with ``timm-lap train`` flags ``argv``; return the final epoch's metrics.

    The run writes into a temporary folder that is deleted afterwards. Returned: ``test_top1``/``test_loss`` (the
    evaluation split at the last epoch), ``test_transport`` (held-out transport, mean over the first
    ``transport_images`` evaluation images, eval mode), ``lam`` (final multiplier, None without one),
    ``train_task_loss``, per-epoch ``curves`` (task loss, transport, lam), ``seconds``, ``threads``, ``device``.
    """
    import torch

    from ..analysis.measure import validation_transport
    from .train import train
    from .train_args import parse_args

    if threads:
        torch.set_num_threads(threads)
    root = tempfile.mkdtemp(prefix="timm-lap-run-")
    try:
        args, text = parse_args(list(argv) + ["--output", root, "--experiment", "run"])
        start = time.perf_counter()
        with _quiet_logs():
            result = train(args, text, plot=False)
        seconds = time.perf_counter() - start
        last = result.rows[-1]
        loader = result.loader_eval
        inner: Any = getattr(loader, "loader", loader)  # timm's PrefetchLoader wraps a DataLoader
        batch_size = inner.batch_size
        max_batches = -(-transport_images // batch_size)
        transport = validation_transport(result.model, loader, max_batches)
        curves = {key: [float(r[key]) for r in result.rows] for key in ("task_loss", "transport", "lap_lambda")}
        return {
            "test_top1": float(last["eval_top1"]), "test_loss": float(last["eval_loss"]),
            "test_transport": float(transport), "lam": result.lam, "train_task_loss": float(last["task_loss"]),
            "curves": curves, "seconds": round(seconds, 2), "threads": torch.get_num_threads(),
            "device": str(result.config.device), "eval_images": len(loader.dataset), "torch": torch.__version__,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Progress:
    """A tqdm bar on a terminal; otherwise one plain line per finished cell (logs and CI stay readable)."""

    def __init__(self, total: int, initial: int, desc: str) -> None:
        from tqdm import tqdm

        self.total, self.done, self.desc = total, initial, desc
        self.start = time.monotonic()
        self.ran = 0
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="run") if sys.stderr.isatty() else None
        if self.bar is None:
            print(f"{desc}: {total - initial} run(s) to go ({initial} already done)", file=sys.stderr, flush=True)

    def update(self, row: dict[str, Any]) -> None:
        from tqdm import tqdm

        self.done += 1
        self.ran += 1
        what = f"{row.get('label', '')} n={row.get('n_train', '')} seed={row.get('seed', '')}".strip()
        if self.bar is not None:
            self.bar.set_postfix_str(f"{what}: top1 {row['test_top1']:.1f}")
            self.bar.update(1)
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.ran * (self.total - self.done)
        print(f"{self.desc} [{self.done}/{self.total}] {what}: top1 {row['test_top1']:.2f}, "
              f"{row['seconds']:.0f} s; elapsed {tqdm.format_interval(elapsed)}, ETA {tqdm.format_interval(eta)}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Sweep:
    """One call of :func:`run_cells`: appends each finished cell's row, counts, reports progress and failures."""

    def __init__(self, results: ResultsFile, total: int, skipped: int, desc: str, threads: int,
                 transport_images: int, deadline: float | None) -> None:
        self.results, self.desc, self.deadline = results, desc, deadline
        self.threads, self.transport_images = threads, transport_images
        self.counts = {"ran": 0, "skipped": skipped, "left": 0}
        self.progress = _Progress(total, skipped, desc)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def finish(self, cell: Cell, metrics: dict[str, Any]) -> None:
        row = {**cell, **metrics}
        self.results.append(row)
        self.counts["ran"] += 1
        self.progress.update(row)

    def failed(self, cell: Cell) -> None:
        print(f"{self.desc}: run failed ({cell.get('label', '')} seed {cell.get('seed', '')}); to see it alone: "
              f"timm-lap train {' '.join(cell['argv'])}", file=sys.stderr, flush=True)

    def serial(self, pending: Sequence[Cell]) -> None:
        """The cells one after the other in this process."""
        for i, cell in enumerate(pending):
            if self.out_of_time():
                self.counts["left"] = len(pending) - i
                break
            try:
                metrics = run_cell(cell["argv"], self.threads, self.transport_images)
            except Exception:
                self.failed(cell)
                raise
            self.finish(cell, metrics)

    def parallel(self, pending: Sequence[Cell], jobs: int) -> None:
        """The cells in ``jobs`` worker processes, started in order, rows appended as they finish."""
        # spawn: a fresh interpreter per worker (fork after torch has started threads is unsafe).
        context = multiprocessing.get_context("spawn")
        queue = list(pending)
        running: dict[Future, Cell] = {}
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            try:
                while queue or running:
                    while queue and len(running) < jobs and not self.out_of_time():
                        cell = queue.pop(0)
                        running[pool.submit(run_cell, cell["argv"], self.threads, self.transport_images)] = cell
                    if not running:
                        break
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        cell = running.pop(future)
                        if future.exception() is not None:
                            self.failed(cell)
                        self.finish(cell, future.result())
            except BaseException:
                for future in running:
                    future.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        self.counts["left"] = len(queue)

    def close(self) -> None:
        self.progress.close()
        if self.counts["left"]:
            print(f"{self.desc}: time limit reached, {self.counts['left']} run(s) left; rerun the same command to "
                  "resume", file=sys.stderr, flush=True)


def run_cells(cells: Sequence[Cell], results: ResultsFile, jobs: int = 1, threads: int | None = None,
              desc: str = "runs", transport_images: int = 2048, deadline: float | None = None) -> dict[str, int]:
    """Run every cell not yet in ``results`` (``jobs`` processes of ``threads`` torch threads each), appending rows.

    Cells are started in the given order. ``deadline`` (a ``time.monotonic()`` instant) stops launching new
    cells; the sweep stays resumable. Returns {'ran', 'skipped', 'left'}.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    done = results.done()
    pending = [c for c in cells if results.key(c) not in done]
    if not pending:
        return {"ran": 0, "skipped": len(cells), "left": 0}
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    sweep = _Sweep(results, len(cells), len(cells) - len(pending), desc, threads, transport_images, deadline)
    try:
        if jobs == 1:
            sweep.serial(pending)
        else:
            sweep.parallel(pending, jobs)
        return sweep.counts
    finally:
        sweep.close()
