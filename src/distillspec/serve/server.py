"""Build the server: load the pair as `generate` does, with one sequence per slot, and wire
the scheduler into the HTTP app. Kept apart from the CLI so that tests and other programs
start the same server in their own process (`build_server`, `ServerThread`)."""

from __future__ import annotations

import socket
import threading
import time

from ..data.sources import training_texts
from ..engine.backend import is_llamacpp
from ..engine.drafters import draft_model_of
from ..errors import DistillSpecError
from ..models.pair import draft_spec, load_pair
from .app import create_app
from .scheduler import Scheduler


def build_server(options, start_thread: bool = True):
    """(FastAPI app, Scheduler, notes) from generate-style options (`cli.serve`'s arguments).
    notes: what was chosen and why, one line each. start_thread: the scheduler runs on its
    own thread (False: the caller runs `scheduler.run()`, as `distillspec serve` does)."""
    from ..engine.gamma import make_gamma_policy
    from ..models.llamacpp_models import DEFAULT_CONTEXT

    make_gamma_policy(options.gamma, None if options.adaptive_gamma == "none" else options.adaptive_gamma)  # fail early
    pair = load_pair(options.target, draft_spec(options.drafter, options.draft),
                     backend=options.backend, device=options.device, dtype=options.dtype,
                     target_quant=options.target_quant, draft_quant=options.draft_quant,
                     linear_layout=options.linear_layout, adaptive_gamma=options.adaptive_gamma,
                     sequences=options.slots, head_texts=training_texts)
    if options.context > DEFAULT_CONTEXT and is_llamacpp(pair.target):
        raise DistillSpecError(f"--context {options.context} is over the {DEFAULT_CONTEXT} positions a slot holds")
    slots = options.slots if is_llamacpp(pair.target) else 1
    if not is_llamacpp(pair.target):
        pair.target.eval()
        if (draft_model := draft_model_of(pair.drafter)) is not None:
            draft_model.eval()
    scheduler = Scheduler(pair, slots, options.queue, gamma=options.gamma,
                          adaptive_gamma=None if options.adaptive_gamma == "none" else options.adaptive_gamma,
                          context_per_slot=options.context, prompt_cache=options.prompt_cache,
                          prefill_chunk=options.prefill_chunk or None, start_thread=start_thread)
    notes = [f"backend {pair.backend_reason}", pair.pass_costs, pair.draft_format]
    if slots != options.slots:
        notes.append(f"the torch backend serves one request at a time (--slots {options.slots} ignored)")
    app = create_app(scheduler, options.model_name or str(options.target))
    return app, scheduler, [n for n in notes if n]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ServerThread:
    """A uvicorn server for `app` on a background thread of this process (tests, notebooks):
    `start()` returns once it accepts connections, `stop()` shuts it down."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise DistillSpecError(f"the HTTP server did not start on {self.host}:{self.port}: is the port in use, "
                                       "or the address not one of this machine's?")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
