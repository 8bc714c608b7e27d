"""Server-side batching, as TF Serving's --enable_batching: concurrent requests share one model call.

Requests for the same model version and signature wait in one queue; a batch
closes when it holds ``max_batch_size`` rows or its oldest request has waited
``batch_timeout_micros``, and runs on one of ``num_batch_threads`` threads,
padded up to the next of ``allowed_batch_sizes`` if given. Each caller gets
its own rows back. A request that would need more than
``max_enqueued_batches`` waiting batches is refused with UNAVAILABLE (HTTP
503) instead of growing the queue without bound; one larger than
``max_batch_size`` with INVALID_ARGUMENT. The parameters file is TF Serving's
``BatchingParameters`` text proto.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import math
import os

import numpy as np

from .servables import LoadedVersion, ServingError, read_text_proto


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters; unset fields take its scheduler's defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    allowed_batch_sizes: tuple[int, ...] = ()

    def validate(self) -> None:
        """Raises ValueError naming the field that cannot work (TF Serving's own checks)."""
        for field in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes must be positive and increasing, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"the last of allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size "
                                 f"({self.max_batch_size})")


def read_batching_parameters(path: str) -> BatchingParameters:
    """The parameters of a --batching_parameters_file; ValueError names what is wrong."""
    from .proto import batching_parameters_pb2

    message = read_text_proto(path, batching_parameters_pb2.BatchingParameters())
    given = {field: getattr(message, field).value
             for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
             if message.HasField(field)}
    parameters = BatchingParameters(**given, allowed_batch_sizes=tuple(message.allowed_batch_sizes))
    parameters.validate()
    return parameters


@dataclasses.dataclass
class _Task:
    servable: LoadedVersion
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued: float


class _Queue:
    """The waiting requests of one (model, version, signature) and the coroutine that batches them.

    The queue holds no servable, only its tasks do: an unloaded version's
    memory is freed once its last request is answered.
    """

    def __init__(self, signature_name: str | None, parameters: BatchingParameters,
                 threads: asyncio.Semaphore, executor: concurrent.futures.Executor, batch_sizes: collections.Counter):
        self.signature_name = signature_name
        self.batch_sizes = batch_sizes
        self.parameters, self.threads, self.executor = parameters, threads, executor
        self.tasks: collections.deque[_Task] = collections.deque()
        self.rows = 0
        self.arrived = asyncio.Event()
        self.scheduler = asyncio.get_running_loop().create_task(self._schedule())

    def submit(self, servable: LoadedVersion, inputs: dict[str, np.ndarray]) -> asyncio.Future:
        rows = len(next(iter(inputs.values())))
        limit = self.parameters.max_batch_size
        if rows > limit:
            raise ServingError(f"Task size {rows} is larger than maximum input batch size {limit}")
        if math.ceil((self.rows + rows) / limit) > self.parameters.max_enqueued_batches:
            raise ServingError("The batch scheduling queue to which this task was submitted is full", 503,
                               "UNAVAILABLE")
        loop = asyncio.get_running_loop()
        task = _Task(servable, inputs, rows, loop.create_future(), loop.time())
        self.tasks.append(task)
        self.rows += rows
        self.arrived.set()
        return task.future

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.parameters.batch_timeout_micros / 1e6
        while True:
            while not self.tasks:
                await self._wait_for_arrival(None)
            await self.threads.acquire()
            while self.rows < self.parameters.max_batch_size:
                remaining = self.tasks[0].enqueued + timeout - loop.time()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
            batch, rows = [], 0
            while self.tasks and rows + self.tasks[0].rows <= self.parameters.max_batch_size:
                task = self.tasks.popleft()
                batch.append(task)
                rows += task.rows
            self.rows -= rows
            loop.create_task(self._run(batch, rows))

    async def _run(self, batch: list[_Task], rows: int) -> None:
        try:
            size = next((s for s in self.parameters.allowed_batch_sizes if s >= rows), rows)
            inputs = {}
            for key in batch[0].inputs:
                merged = np.concatenate([task.inputs[key] for task in batch])
                if size > rows:  # pad with copies of the first row, as TF Serving's batching session
                    merged = np.concatenate([merged, np.repeat(merged[:1], size - rows, axis=0)])
                inputs[key] = merged
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, batch[0].servable.run, self.signature_name, inputs)
            self.batch_sizes[size] += 1
            start = 0
            for task in batch:
                if not task.future.done():  # the caller may have gone away
                    task.future.set_result({key: value[start:start + task.rows] for key, value in outputs.items()})
                start += task.rows
        except Exception as error:  # every waiting caller hears it
            for task in batch:
                if not task.future.done():
                    task.future.set_exception(error)
        finally:
            self.threads.release()


class Predictor:
    """Runs predict requests on loaded versions, batched if ``parameters`` is given.

    Args:
      parameters: BatchingParameters to batch concurrent requests; None runs
        each request on its own (a thread per request, as without --enable_batching).
    """

    def __init__(self, parameters: BatchingParameters | None = None):
        self.parameters = parameters
        self._queues: dict[tuple[str, int, str], _Queue] = {}
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # {rows per model call: calls}
        self._threads: asyncio.Semaphore | None = None
        self._executor = (concurrent.futures.ThreadPoolExecutor(parameters.num_batch_threads, "batch")
                          if parameters else None)

    async def predict(self, servable: LoadedVersion, signature_name: str | None,
                      inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named numpy outputs for named numpy inputs; ServingError for bad inputs or a full queue."""
        checked = servable.check_inputs(signature_name, inputs)
        if self.parameters is None:
            return await asyncio.get_running_loop().run_in_executor(None, servable.run, signature_name, checked)
        if self._threads is None:
            self._threads = asyncio.Semaphore(self.parameters.num_batch_threads)
        key = (servable.name, servable.version, signature_name or "")
        if key not in self._queues:
            self._queues[key] = _Queue(signature_name, self.parameters, self._threads, self._executor,
                                         self.batch_sizes)
        return await self._queues[key].submit(servable, checked)
