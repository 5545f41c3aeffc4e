"""Publishing an exported model on the Hugging Face hub, so that `from_pretrained("owner/name")`, vLLM or
TGI can load it from anywhere.

The folder is what `export_hf` writes (a standard transformers directory), uploaded as it is with
`huggingface_hub.HfApi.upload_folder`; the repository is created first when it does not exist. The token
is huggingface_hub's own: `HF_TOKEN` in the environment, else the one `hf auth login` stored. It is
looked up before any work (`hub_token`), so a missing token fails in a second, not after a conversion.
"""

from __future__ import annotations

import re
from pathlib import Path

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class HubError(ValueError):
    """The push could not be done; the message says why and what to do (the local folder is kept)."""


def hub_token(token: str | None = None) -> str:
    """`token`, else HF_TOKEN, else the token `hf auth login` saved; a HubError that says how to get one."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "pushing to the Hugging Face hub needs a token with write access: set HF_TOKEN (create one at "
            "https://huggingface.co/settings/tokens) or run `hf auth login`"
        )
    return token


def check_repo_id(repo_id: str) -> str:
    """`repo_id` when it is a valid model repository name ("owner/name" or "name"), else a HubError."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise HubError(
            f"{repo_id!r} is not a hub repository id: use owner/name (letters, digits, '-', '_', '.'), "
            "e.g. my-name/qwen2.5-0.5b-grpo-gsm8k"
        )
    return repo_id


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model exported by rlvr-jax",
) -> str:
    """Uploads the HF directory `folder` to the model repository `repo_id`; returns the repository's URL.

    private: create the repository private (an existing repository keeps its visibility).
    token: default HF_TOKEN or the saved login (`hub_token`).
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    if not (folder / "config.json").is_file():
        raise HubError(
            f"{folder} has no config.json: push a Hugging Face model directory (what export_hf or "
            "scripts/convert.py writes, e.g. WORKDIR/hf_export)"
        )
    from huggingface_hub import HfApi

    api = HfApi(token=hub_token(token))
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message
        )
    except Exception as e:  # network, permission, quota: huggingface_hub raises httpx and hub errors
        raise HubError(
            f"pushing {folder} to {repo_id} failed ({type(e).__name__}: {e}); the folder is unchanged, "
            "run the push again once the hub is reachable and the token may write to that repository"
        ) from e
    return str(url)
