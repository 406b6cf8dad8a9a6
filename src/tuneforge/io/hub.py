"""`tuneforge push DIR REPO_ID`: upload a folder (adapter, merged model, sentence-transformers export, each with its
README.md model card) to the Hugging Face Hub with huggingface_hub.

Pushing needs a token with write access and the network. Both are checked first, so a missing token or an
unreachable Hub is one clear sentence within `timeout` seconds instead of a traceback or a hang: the token via
huggingface_hub's own lookup (HF_TOKEN, then the `hf auth login` file), the network with a TCP connection to the
endpoint (HF_ENDPOINT, default https://huggingface.co), and HF_HUB_OFFLINE=1 refuses outright.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import TuneforgeError

TOKEN_HELP = ("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a token that may write "
              "(https://huggingface.co/settings/tokens)")


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_reachable(endpoint: str, timeout: float) -> None:
    """TuneforgeError unless a TCP connection to the endpoint's host opens within `timeout` seconds."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise TuneforgeError(f"cannot reach {endpoint} ({reason}); pushing to the Hub needs the network") from None


def push_folder(folder, repo_id: str, *, token: str | None = None, private: bool = False,
                revision: str | None = None, message: str | None = None, timeout: float = 10.0) -> str:
    """Create `repo_id` (a model repo; kept if it exists) and upload `folder` to it; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import get_token, validate_repo_id

    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise TuneforgeError(f"{folder}: not a folder with files to push")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise TuneforgeError(f"repo id {repo_id!r} is not valid ({err}); use 'user-or-org/name'") from None
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise TuneforgeError("HF_HUB_OFFLINE is set: pushing to the Hub needs the network")
    token = token or get_token()
    if not token:
        raise TuneforgeError(TOKEN_HELP)
    endpoint = hub_endpoint()
    check_reachable(endpoint, timeout)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=message or f"Upload {folder.name} with tuneforge",
                                 ignore_patterns=[".*", "**/.*"])
    except Exception as err:  # huggingface_hub's HTTP errors carry the server's reason (401, 403, 404...)
        raise TuneforgeError(f"push to {repo_id} failed: {err}") from None
    return str(getattr(info, "commit_url", info))
