"""`distillspec serve`: the pair `generate` runs, behind an OpenAI-compatible HTTP endpoint."""

from __future__ import annotations

import argparse
import signal
import sys

from ..choices import BACKEND_CHOICES, DRAFTER_CHOICES
from ..engine.gamma import ADAPTIVE_GAMMA_CHOICES, DEFAULT_GAMMA
from .argtypes import DefaultsHelpFormatter, adaptive_gamma_option, add_quant_options, nonnegative_int, \
    positive_int

#: positions each slot may use (prompt + reply)
DEFAULT_SLOT_CONTEXT = 4096
#: prompt tokens read per pass at most (docs/serving.md has the measurements behind it)
DEFAULT_PREFILL_CHUNK = 256


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve speculative decoding over an OpenAI-compatible HTTP API",
        description=(
            "Serve TARGET with speculative decoding at /v1/chat/completions and /v1/completions (OpenAI's "
            "schema, streaming as server-sent events), /v1/models, /health and /metrics (Prometheus). The "
            "engine, backend, draft and gamma policy are generate's. On llama.cpp, concurrent requests share "
            "target passes: each step verifies the drafted blocks of up to --slots sequences in one decode, and "
            "new prompts are read --prefill-chunk tokens per pass, in turn. Requests past the slots wait in a "
            "queue of --queue; past that they get 503. Query it with any OpenAI client, e.g. "
            "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none')."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--target", default="default", help="as for generate ('default' = qwen2.5-coder-1.5b)")
    p.add_argument("--draft", default="default", help="as for generate ('default': the target's measured best pair)")
    p.add_argument("--drafter", choices=DRAFTER_CHOICES, default="lookup+model",
                   help="lookup+model: n-gram lookup in the context where it has a match (blocks sized by the "
                        "ramp), the --draft model elsewhere (sized by --adaptive-gamma), the same as --draft "
                        "prompt-lookup+DRAFT; measured fastest on edits and level elsewhere (docs/prompt-lookup.md). model: the "
                        "--draft model alone. prompt-lookup: lookup alone, no model (--draft ignored)")
    add_quant_options(p)
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="as for generate; the torch backend serves one request at a time")
    p.add_argument("--gamma", type=int, default=DEFAULT_GAMMA, help="tokens drafted per step (initial value if adaptive); with the default drafter, "
                        "lookup+model, this sizes the model's blocks only, lookup's are the ramp's: the target "
                        "alone is --drafter model --gamma 0 --adaptive-gamma none")
    p.add_argument("--adaptive-gamma", choices=["auto", "none", *ADAPTIVE_GAMMA_CHOICES], default="auto",
                   help="as for generate: auto is ramp for prompt lookup alone, else cost-model, which picks the "
                        "model's gamma per request from measured acceptance and costs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--slots", type=positive_int, default=4,
                   help="requests generated at once (llama.cpp; the torch backend uses 1)")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait for a slot; more get 503")
    p.add_argument("--context", type=positive_int, default=DEFAULT_SLOT_CONTEXT,
                   help="positions (prompt + reply) one request may use")
    p.add_argument("--prompt-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="llama.cpp: a slot keeps what it holds after a request, and the next request there "
                        "prefills only what follows the longest prefix of its prompt that the slot holds (a chat's "
                        "earlier turns); a request goes to the free slot sharing at least half of its prompt or of "
                        "what the slot holds, else to the least recently used one. A request may opt out with "
                        "\"cache_prompt\": false, as llama-server's")
    p.add_argument("--prefill-chunk", type=nonnegative_int, default=DEFAULT_PREFILL_CHUNK,
                   help="llama.cpp: prompt tokens read per target pass at most, first come first served, so that "
                        "requests arriving together get their first tokens one after another and the streams "
                        "already running keep going between chunks; draft models that lack more of a context "
                        "read at most this many positions per pass between them, drafting nothing meanwhile (0: "
                        "every new prompt whole in the next pass, and a draft's at its first block)")
    p.add_argument("--model-name", default=None, help="the id /v1/models reports (default: the target spec)")
    p.add_argument("--dtype", default="bfloat16", help="torch backend: float32, bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="torch backend: cpu, cuda or another torch device")
    p.set_defaults(func=serve_command)


def serve_command(args) -> int:
    from ..errors import DistillSpecError

    if not 0 < args.port < 65536:
        raise DistillSpecError(f"--port must be in 1..65535, got {args.port}")
    if args.queue < 0:
        raise DistillSpecError(f"--queue must be >= 0, got {args.queue}")
    from ..serve.server import ServerThread, build_server

    args.adaptive_gamma = adaptive_gamma_option(args)

    # the engine runs here, on the main thread that loaded the models, and HTTP beside it
    # (serve/scheduler.py says why)
    app, scheduler, notes = build_server(args, start_thread=False)
    for note in notes:
        print(f"distillspec: {note}", file=sys.stderr)
    http = ServerThread(app, args.host, args.port)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: the same clean exit
    try:
        http.start()
        print(f"distillspec: serving {app.title} on http://{args.host}:{args.port}/v1 ({len(scheduler.slots)} "
              "slots); Ctrl-C stops", file=sys.stderr)
        scheduler.run()
    except KeyboardInterrupt:
        print("distillspec: stopping the server", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        scheduler.close()
        http.stop()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
