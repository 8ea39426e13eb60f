"""The Hugging Face hub, kept offline: names are looked up on disk, never on the network.

Why: model hubs are unreachable here and for many users, and the library promises never
to download. transformers asks the hub even for cached ids with local_files_only (an
adapter config lookup, retried), so every load runs inside `hub_offline`.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub's offline mode inside the block, restored after.

    Why: even with local_files_only, loading a cached hub id asked huggingface.co for an
    adapter config first (retried for many seconds with no network); the library never
    downloads, so every load runs with the hub switched off.
    """
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def hub_cache_holds(repo_id: str) -> bool:
    """Whether the local Hugging Face cache has this model (looked up on disk, no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id
        return False
    return isinstance(found, str)
