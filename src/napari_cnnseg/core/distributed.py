"""dask.distributed plumbing for cohorts (:mod:`.cohort`) and block-wise volumes (:mod:`.blocks`).

Optional: needs ``pip install napari-cnnseg[distributed]`` (``distributed`` + ``dask``);
importing this module without it works, using it raises an :class:`~.errors.InputError` that
says what to install.

* :func:`open_client`: a new ``LocalCluster`` (``workers`` processes, threads per worker so
  that workers x threads = cores, each worker offering the resource ``cnnseg=1``) or a client
  of a running scheduler; closed on leaving the ``with`` block when we made it.
* :func:`model_on_workers`: sends the model **once per worker** as a ``WorkerPlugin``; the
  scheduler re-runs the plugin on every worker that joins later (a restarted or replacement
  worker), so tasks always find it with :func:`worker_model`. The plugin also sets torch's
  thread count to the worker's thread count.
* :func:`run_cohort_on_dask`: one task per volume; a task whose worker died or was restarted
  is submitted again (up to :data:`MAX_ATTEMPTS` times), outputs being atomic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import Cancelled, InputError
from .jobs import CancelFn

log = logging.getLogger(__name__)

#: how often one volume (or block) is submitted when its worker dies under it
MAX_ATTEMPTS = 4
#: worker resource that admits one volume at a time per worker (torch uses its threads)
RESOURCE = "cnnseg"
#: models installed on this worker process by :class:`ModelPlugin`, by key
_MODELS: dict[str, Any] = {}
INSTALL_HINT = "pip install napari-cnnseg[distributed]"
#: dask settings of the LocalCluster of ``workers=N`` (measured on a 2-core EPYC, docs/cohorts.md):
#: the nanny's MALLOC_TRIM_THRESHOLD_=65536 pins glibc's mmap threshold, so every large numpy /
#: torch buffer is a fresh mmap, page-faulted and zeroed (25-40 % more CPU per volume): unset;
#: the workers' statistical profiler (a stack sample every 10 ms) cost another ~10 %: off
LOCAL_CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


def require_distributed() -> Any:
    """The ``distributed`` module, or an InputError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise InputError(f"running on a dask cluster needs dask.distributed: {INSTALL_HINT}") from None
    return distributed


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None,
                client: Any = None) -> Iterator[Any]:
    """A ``distributed.Client``: ``client`` itself, one of ``scheduler``, or a new LocalCluster.

    Args:
        workers: worker processes of a new LocalCluster here; threads per worker
            ``max(1, cores // workers)``; each worker offers ``cnnseg=1``.
        scheduler: address of a running scheduler (``tcp://host:8786``).
        client: an existing client (left open).
    """
    if client is not None:
        yield client
        return
    distributed = require_distributed()
    if scheduler:
        try:
            c = distributed.Client(scheduler, timeout="30s")
        except OSError as exc:
            raise InputError(f"cannot reach the dask scheduler at {scheduler} ({exc}); start one "
                             "with `dask scheduler` or check the address") from None
        try:
            yield c
        finally:
            c.close()
        return
    n = int(workers or 1)
    if n < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    threads = max(1, (os.cpu_count() or 1) // n)
    log.info("starting a LocalCluster: %d workers x %d threads", n, threads)
    import dask

    with dask.config.set(LOCAL_CLUSTER_CONFIG), \
            distributed.LocalCluster(n_workers=n, threads_per_worker=threads, processes=True,
                                     resources={RESOURCE: 1}, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def _plugin_class() -> type:
    distributed = require_distributed()

    class ModelPlugin(distributed.WorkerPlugin):
        """Installs one model on each worker (setup runs on every worker, also later ones)."""

        def __init__(self, key: str, model: Any) -> None:
            self.key, self.model = key, model

        # this class is pickled by value (defined in a function): reach the module's globals
        # through an import, not through names captured with the class
        def setup(self, worker: Any) -> None:
            import torch

            from napari_cnnseg.core import distributed as here

            if here.RESOURCE in (getattr(worker.state, "total_resources", None) or {}):
                torch.set_num_threads(max(1, int(worker.state.nthreads)))
            else:
                torch.set_num_threads(1)  # several volumes at once on this worker
            here._MODELS[self.key] = self.model

        def teardown(self, worker: Any) -> None:
            from napari_cnnseg.core import distributed as here

            here._MODELS.pop(self.key, None)

    return ModelPlugin


def _cpu_copy(model: Any) -> Any:
    import copy

    import torch

    m = copy.deepcopy(model).to(torch.device("cpu")).eval()
    if hasattr(model, "meta"):
        m.meta = dict(model.meta)
    return m


@contextlib.contextmanager
def model_on_workers(client: Any, model: Any, key: str | None = None) -> Iterator[str]:
    """Install ``model`` on every worker of ``client`` (and on any joining later); yields the
    key tasks pass to :func:`worker_model`. Removed from the workers afterwards."""
    key = key or f"cnnseg-model-{uuid.uuid4().hex[:12]}"
    answers = client.register_plugin(_plugin_class()(key, _cpu_copy(model)), name=key) or {}
    bad = {w: a for w, a in answers.items() if isinstance(a, dict) and a.get("status") != "OK"}
    if bad:
        worker, answer = next(iter(bad.items()))
        raise RuntimeError(f"cannot install the model on worker {worker}: {answer.get('exception', answer)}")
    try:
        yield key
    finally:
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(key)


def worker_model(key: str) -> Any:
    """The model installed on this worker under ``key`` (see :func:`model_on_workers`)."""
    try:
        return _MODELS[key]
    except KeyError:
        raise RuntimeError(f"model {key} is not installed on this worker (plugin missing)") from None


def task_resources(client: Any) -> dict[str, int] | None:
    """``{"cnnseg": 1}`` when every worker offers that resource (one volume at a time per
    worker, torch using all its threads), else None (one volume per dask thread)."""
    workers = client.scheduler_info().get("workers", {})
    if workers and all(RESOURCE in (w.get("resources") or {}) for w in workers.values()):
        return {RESOURCE: 1}
    log.warning("the dask workers offer no '%s' resource: each dask thread runs one volume with "
                "one torch thread (start workers with --resources %s=1 for one volume per worker "
                "using all its threads)", RESOURCE, RESOURCE)
    return None


def _cohort_task(path: str, key: str, outdir: str, options: Any, fingerprint: str) -> dict:
    from .cohort import run_one

    return run_one(Path(path), worker_model(key), Path(outdir), options, fingerprint)


def run_tasks(client: Any, fn: Callable, items: Sequence[Any], args: tuple, *,
              on_result: Callable[[int, Any], None], cancel: CancelFn | None = None,
              resources: dict | None = None, what: str = "task") -> list[Any]:
    """Run ``fn(item, *args)`` for every item on the cluster; returns results in item order.

    A task that raised because its worker was lost or restarted (tasks themselves never raise
    for a bad input) is submitted again, up to :data:`MAX_ATTEMPTS` times; after that its
    result is the exception. ``on_result(index, result)`` is called as each finishes;
    ``cancel()`` is polled every 0.1 s (cancels every task, raises Cancelled).
    """
    results: list[Any] = [None] * len(items)
    attempts = [0] * len(items)
    pending: dict[Any, int] = {}

    def submit(i: int) -> None:
        attempts[i] += 1
        fut = client.submit(fn, items[i], *args, key=f"{what}-{i}-{attempts[i]}-{uuid.uuid4().hex[:8]}",
                            resources=resources, retries=0, pure=False)
        pending[fut] = i

    for i in range(len(items)):
        submit(i)
    while pending:
        if cancel is not None and cancel():
            client.cancel(list(pending))
            raise Cancelled(f"{what}s cancelled by the user")
        done = [f for f in pending if f.done()]  # finished, failed or cancelled (restart)
        if not done:
            time.sleep(0.1)
        for fut in done:
            i = pending.pop(fut)
            try:
                results[i] = fut.result()
            except BaseException as exc:  # noqa: BLE001 - a lost or restarted worker (CancelledError)
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                if attempts[i] < MAX_ATTEMPTS:
                    log.warning("%s %d: %s: %s; submitting it again", what, i, type(exc).__name__, exc)
                    submit(i)
                    continue
                results[i] = exc
            on_result(i, results[i])
    return results


def run_cohort_on_dask(paths: Sequence[Path], model: Any, outdir: Path, options: Any,
                       fingerprint: str, engine: Any, *,
                       on_record: Callable[[dict], None] | None = None,
                       cancel: CancelFn | None = None) -> list[dict]:
    """One dask task per volume (see :func:`~.cohort.segment_cohort`); records in input order.
    ``engine``: a ``cohort.CohortEngine`` naming the workers, scheduler or client."""
    from .cohort import failed_record

    def record(i: int, res: Any) -> dict:
        return res if isinstance(res, dict) else failed_record(paths[i], res)

    with open_client(engine.workers, engine.scheduler, engine.client) as c, model_on_workers(c, model) as key:
        res = run_tasks(c, _cohort_task, [str(p) for p in paths],
                        (key, str(outdir), options, fingerprint),
                        on_result=lambda i, r: on_record and on_record(record(i, r)),
                        cancel=cancel, resources=task_resources(c), what="cnnseg-volume")
    return [record(i, r) for i, r in enumerate(res)]
