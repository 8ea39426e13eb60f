"""Several generations at once on one target: slots, a bounded queue, one target pass per step.

Why: a server's clients arrive together, and on a CPU a target pass over a few tokens of
several sequences costs little more than over one sequence's, because the weights are read
once. So each step drafts every active sequence's block (one after another: the draft is
cheap), then verifies all blocks in one llama.cpp decode with one sequence id per slot
(`llamacpp.batched_forward`), as llama-server's slots do. Each sequence keeps its own
acceptance, γ policy, rollback and statistics (`loop.SpeculativeCall`). On the torch backend
requests are served one at a time (one slot): its caches hold one sequence each.

Prompts in chunks (llama.cpp, `prefill_chunk`): a pass reads at most that many prompt
tokens, first come, first served (`_shared_pass`). Reading a burst of prompts in one pass
would give every one of them its first token only at the end of it; a CPU reads prompt
tokens at the same rate whether they come in one pass or several, so taking them in turn
brings most first tokens earlier and costs little.

Prompt cache (llama.cpp, on unless `prompt_cache=False`): a slot's target and draft keep
what their sequences hold after a request, and the next request on that slot keeps the
longest common prefix of it with its prompt, feeding only the rest. A chat client sends the
whole conversation each turn, so its next turn, sent to the slot holding the conversation,
prefills only what is new (`Scheduler._slot_for` says how a slot is chosen).

The engine runs in one thread, which owns the models; HTTP handlers only submit jobs and
read their events, so no model is ever touched by two threads. `distillspec serve` runs it
on the main thread, the thread that loaded the models (`run`), and the HTTP server beside
it: ggml's threads are an OpenMP team per calling thread, and once a second thread's team
exists there are more OpenMP threads than cores, so the runtime stops letting idle ones
spin and every decode waits for them to wake (docs/serving.md has the measured cost).
Tests and notebooks let the scheduler start its own thread (`start_thread`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..engine import LookupFirstDrafter, ModelDrafter
from ..engine.drafters import draft_model_of
from ..engine.backend import is_llamacpp
from ..engine.kv import common_prefix_length
from ..engine.llamacpp import batched_forward
from ..engine.loop import speculative_call
from ..engine.stops import StopStrings
from ..errors import DistillSpecError


class QueueFull(Exception):
    """Every slot is busy and the queue holds its limit of waiting requests."""


@dataclass
class Job:
    """One request: its prompt, its engine options and where its events go.

    sink(kind, payload) is called from the engine's thread: ('tokens', (ids, accepted)),
    then ('done', GenerationResult) or ('error', message). `cancel()` (a client that went
    away) frees its slot at the next step; nothing more is sent to it.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    sink: Callable[[str, object], None]
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    cache_prompt: bool = True  # False: this request keeps nothing its slot holds (a whole prefill)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class Slot:
    index: int
    target: object  # the target's view for this slot (a llama.cpp sequence) or the torch model
    drafter: object
    job: Job | None = None
    call: object = None
    started: float = 0.0
    admitted: int = 0  # when it last took a job (a count of admissions; 0: never)


class Scheduler:
    """Runs jobs on `slots` slots of a loaded pair (`models.pair.LoadedPair`, loaded with
    `sequences=slots` on llama.cpp); at most `queue_limit` jobs wait for a slot."""

    def __init__(self, pair, slots: int, queue_limit: int, *, gamma: int, adaptive_gamma: str | None,
                 context_per_slot: int, prompt_cache: bool = True, prefill_chunk: int | None = None,
                 start_thread: bool = True):
        if slots < 1 or queue_limit < 0:
            raise DistillSpecError(f"slots must be >= 1 and the queue limit >= 0, got {slots} and {queue_limit}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise DistillSpecError(f"the prefill chunk must be >= 1 token (or None: no limit), got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        if not is_llamacpp(pair.target) and slots != 1:
            raise DistillSpecError(f"the torch backend serves one request at a time; got --slots {slots}")
        self.pair, self.tokenizer = pair, pair.tokenizer
        self.gamma, self.adaptive_gamma = gamma, adaptive_gamma
        self.context_per_slot, self.queue_limit = context_per_slot, queue_limit
        self.prompt_cache = prompt_cache and is_llamacpp(pair.target)
        self.slots = [Slot(i, *self._slot_models(i)) for i in range(slots)]
        self.queue: deque[Job] = deque()
        self.condition = threading.Condition()
        self.closing = False
        self.steps = 0  # engine steps run (each one target pass for all active slots)
        self.admissions = 0  # jobs that took a slot
        self.thread = None
        if start_thread:
            self.thread = threading.Thread(target=self.run, name="distillspec-engine", daemon=True)
            self.thread.start()

    def _slot_models(self, index: int):
        target, drafter = self.pair.target, self.pair.drafter
        if not is_llamacpp(target):
            return target, drafter
        return target.sequence(index, keep_prefix=self.prompt_cache), self._slot_drafter(drafter, index)

    def _slot_drafter(self, drafter, index: int):
        """The drafter of slot `index`: a model draft on its own sequence of the draft's context."""
        if isinstance(drafter, LookupFirstDrafter):
            return LookupFirstDrafter(self._slot_drafter(drafter.model_drafter, index), drafter.lookup)
        if isinstance(drafter, ModelDrafter):
            return ModelDrafter(drafter.model.sequence(index, keep_prefix=self.prompt_cache),
                                head_token_ids=drafter.head_token_ids)
        return drafter  # prompt lookup: its state is per call (its session), so slots share it

    # ------------------------------------------------------------------ HTTP side

    def submit(self, job: Job) -> None:
        """Queue a job (raises QueueFull past the limit, DistillSpecError if it cannot fit)."""
        needed = len(job.prompt_ids) + job.max_new_tokens
        if needed > self.context_per_slot:
            raise DistillSpecError(f"the prompt ({len(job.prompt_ids)} tokens) and max_tokens ({job.max_new_tokens}) "
                                   f"need {needed} positions; a request may use {self.context_per_slot}")
        with self.condition:
            busy, waiting = sum(s.job is not None for s in self.slots), len(self.queue)
            if busy + waiting >= len(self.slots) + self.queue_limit:
                raise QueueFull(f"all {len(self.slots)} slots are busy and {waiting} requests wait (the queue holds "
                                f"{self.queue_limit})")
            self.queue.append(job)
            self.condition.notify()

    def load(self) -> dict:
        with self.condition:
            return {"slots": len(self.slots), "busy": sum(s.job is not None for s in self.slots),
                    "queued": len(self.queue), "steps": self.steps}

    def close(self) -> None:
        with self.condition:
            self.closing = True
            self.condition.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    # ------------------------------------------------------------------ engine thread

    def run(self) -> None:
        """The engine loop until `close()` (or an exception, such as Ctrl-C on the main
        thread); the requests still running then get an error."""
        try:
            while True:
                with self.condition:
                    while not self.closing and not self.queue and all(s.job is None for s in self.slots):
                        self.condition.wait()
                    if self.closing:
                        break
                    self._admit()
                active = [s for s in self.slots if s.job is not None]
                if active:
                    self._step(active)
        finally:
            for slot in self.slots:
                if slot.job is not None:
                    self._finish(slot, "error", "the server is shutting down")

    def _admit(self) -> None:
        """Move queued jobs into free slots (cancelled ones are dropped); called locked."""
        while self.queue and any(slot.job is None for slot in self.slots):
            job = self.queue.popleft()
            if job.cancelled.is_set():
                continue
            slot = self._slot_for(job)
            try:
                if not job.cache_prompt:
                    self._forget(slot)
                slot.call = self._open_call(slot, job)
            except Exception as exc:  # a bad request must not stop the engine
                job.sink("error", str(exc))
                continue
            self.admissions += 1
            slot.job, slot.started, slot.admitted = job, time.perf_counter(), self.admissions

    def _slot_for(self, job: Job) -> Slot:
        """The free slot that would keep most of the job's prompt, if their common prefix is at
        least half of the prompt (a prompt sent again, a long shared preamble) or of what the
        slot holds (a conversation's next turn); otherwise the least recently used free slot,
        so that a new conversation does not evict one that may come back (it still keeps what
        prefix it shares there, such as a system prompt). Without the prompt cache, the first
        free slot."""
        free = [slot for slot in self.slots if slot.job is None]
        if not self.prompt_cache:
            return free[0]
        least_recent = min(free, key=lambda slot: slot.admitted)
        if not job.cache_prompt:
            return least_recent
        continued = []
        for slot in free:
            held = slot.target.held_ids()
            kept = common_prefix_length(held, job.prompt_ids)
            if kept and 2 * kept >= min(len(held), len(job.prompt_ids)):
                continued.append((kept, slot))
        return max(continued, key=lambda entry: entry[0])[1] if continued else least_recent

    def _forget(self, slot: Slot) -> None:
        """Clear what a slot's target and draft sequences hold."""
        if self.prompt_cache:
            slot.target.clear()
            if (model := draft_model_of(slot.drafter)) is not None:
                model.clear()

    def _open_call(self, slot: Slot, job: Job):
        stop = StopStrings(job.stop, self.tokenizer.decode) if job.stop else None
        return speculative_call(slot.target, slot.drafter, job.prompt_ids, max_new_tokens=job.max_new_tokens,
                                gamma=self.gamma, adaptive_gamma=self.adaptive_gamma, temperature=job.temperature,
                                top_k=job.top_k, top_p=job.top_p, seed=job.seed, stop=stop,
                                eos_token_id=self.tokenizer.eos_token_id, tokenizer_vocab_size=len(self.tokenizer),
                                on_tokens=lambda ids, accepted, job=job: job.sink("tokens", (ids, accepted)),
                                cost_prior=self.pair.cost_prior,
                                draft_read_chunk=self.prefill_chunk if is_llamacpp(slot.target) else None)

    def _step(self, active: list[Slot]) -> None:
        """One step of every active slot: each drafts, one target pass verifies them all."""
        live = []
        for slot in active:
            if slot.job.cancelled.is_set():
                self._free(slot)
            else:
                live.append(slot)
        if not live:
            return
        try:
            if is_llamacpp(self.pair.target):
                self._shared_pass(live)
            else:
                for slot in live:
                    slot.call.step(slot.started)
        except Exception as exc:  # the pass failed: fail its requests, keep serving
            for slot in live:
                self._finish(slot, "error", f"generation failed: {exc}")
            return
        self.steps += 1
        for slot in live:
            if slot.call.done:
                self._finish(slot, "done", slot.call.result(slot.started))

    def _shared_pass(self, live: list[Slot]) -> None:
        """One llama.cpp pass for the live slots: each generating slot's step, and prompts
        read first come, first served, at most `prefill_chunk` tokens of them per pass (and as
        many positions that draft models read ahead, `SpeculativeCall.begin_step`). A
        prompt that fits what is left of that budget gets its first step (its rest, the
        block, and logits to verify); the first one that does not is read in part, and the
        ones after it wait. So a burst of requests gets its first tokens one after another
        instead of all at the end of one long pass, and the slots already generating keep
        going between chunks. Without a limit every new prompt is read in this pass."""
        budget = draft_budget = self.prefill_chunk  # prompt tokens, and positions drafts read ahead
        lms, feeds, steps = [], [], []  # steps: (slot, its pending step), or None for a prompt chunk
        reads_prompt = False
        for slot in sorted(live, key=lambda s: s.admitted):
            left = slot.call.prompt_left
            if left and budget is not None and left > budget:
                if budget:  # part of this prompt now; its first step in a later pass
                    lms.append(slot.call.target)
                    feeds.append((slot.call.prompt_chunk(budget), 1))
                    steps.append(None)
                    budget, reads_prompt = 0, True
                continue
            if left and budget is not None:
                budget -= left
            reads_prompt = reads_prompt or bool(left)
            pending = slot.call.begin_step(draft_budget)
            if pending.reads_draft:  # a draft's read ahead: it held up this pass, and used the budget
                reads_prompt = True
                draft_budget = None if draft_budget is None else draft_budget - pending.proposal.tokens_fed
            lms.append(slot.call.target)
            feeds.append((pending.feed, pending.num_logits))
            steps.append((slot, pending))
        logits = batched_forward(lms, feeds)
        for step, rows in zip(steps, logits):
            if step is not None:
                slot, pending = step
                slot.call.end_step(pending, rows, slot.started, pass_shared_with_prefill=reads_prompt)

    def _finish(self, slot: Slot, kind: str, payload) -> None:
        if not slot.job.cancelled.is_set():
            slot.job.sink(kind, payload)
        self._free(slot)

    def _free(self, slot: Slot) -> None:
        with self.condition:
            slot.job, slot.call = None, None
