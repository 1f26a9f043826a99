"""Fetching a checkpoint from the Hugging Face hub into a local directory the registry records.

Only what vLLM loads is downloaded (configs, safetensors weights, tokenizer, chat templates);
`.bin` and `.pth` copies of the weights that many repos also carry are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from fleet_common.errors import FailedPrecondition, InvalidArgument

ALLOW_PATTERNS = ("*.json", "*.safetensors", "tokenizer.model", "*.jinja")

# The hub's own rule: ASCII letters, digits, "_", "-" and "."; no part starts or ends with
# "-" or "."; at most 96 characters a part; "--" and ".." nowhere.
_PART = r"\w(?:[\w.-]{0,94}\w)?"
_REPO_ID = re.compile(rf"(?P<owner>{_PART})/(?P<name>{_PART})", re.ASCII)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def download_hf_repo(repo_id: str, dest_root: Path, *, revision: str | None = None) -> Path:
    """Downloads `repo_id` (at `revision`, default the main branch) to a directory under
    `dest_root` named after the repo and revision, and returns that directory."""
    owner, name = _parse_repo_id(repo_id)
    local_dir = Path(dest_root) / local_dir_name(owner, name, revision)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HTTPError

    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            local_dir=local_dir,
            allow_patterns=list(ALLOW_PATTERNS),
        )
    except HFValidationError as exc:
        raise InvalidArgument("hf_repo_id", str(exc)) from exc
    # The hub's errors subclass OSError (offline mode, missing files, HTTP statuses) or the
    # HTTP client's HTTPError (connection, proxy and timeout failures).
    except (OSError, HTTPError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        reason = first_line.removeprefix("Got: ").rstrip(".")
        raise FailedPrecondition(
            f"cannot download {repo_id} from the Hugging Face hub: {reason}; this machine may "
            "have no network — register a local directory instead"
        ) from exc
    return Path(path)


def local_dir_name(owner: str, name: str, revision: str | None = None) -> str:
    """`owner--name[--revision]`: unambiguous, since "--" cannot occur in a repo id."""
    parts = [owner, name, _UNSAFE.sub("-", revision)] if revision else [owner, name]
    return "--".join(parts)


def _parse_repo_id(repo_id: str) -> tuple[str, str]:
    match = _REPO_ID.fullmatch(repo_id)
    if match is None or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise InvalidArgument(
            "hf_repo_id",
            f"must be 'owner/name' (letters, digits, '_', '-', '.'; at most 96 characters "
            f"each), got {repo_id!r}",
        )
    return match["owner"], match["name"]
