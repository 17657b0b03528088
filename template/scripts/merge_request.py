"""Open or update the one merge request of an update branch (GitLab CI's scheduled update job;
GitHub uses ``gh`` instead). A conflicted update is a draft.

    python scripts/merge_request.py TITLE BODY_FILE DRAFT(0|1) [BRANCH]

BRANCH is the one ``scripts/template_update.py`` printed: ``template-update``, or
``template-update-vX.Y.Z`` while ``template-update`` still holds the team's unresolved conflicts.

Reads GitLab's own job variables (CI_API_V4_URL, CI_PROJECT_ID, CI_DEFAULT_BRANCH) and
TEMPLATE_UPDATE_TOKEN, a project access token with the ``api`` scope (docs/updating.md): the
job token may not create merge requests.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any


def api(method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
    url = f"{os.environ['CI_API_V4_URL']}/projects/{os.environ['CI_PROJECT_ID']}{path}"
    if not url.startswith("https://"):
        raise SystemExit(f"merge request: {url} is not HTTPS; the token is not sent there")
    request = urllib.request.Request(  # noqa: S310  # nosec B310 (https only, checked above)
        url,
        data=json.dumps(payload).encode() if payload is not None else None,
        method=method,
        headers={"PRIVATE-TOKEN": os.environ["TEMPLATE_UPDATE_TOKEN"], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # nosec B310
        return json.load(response)


def main() -> int:
    title, body_file, draft = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
    # Without BRANCH: the job of a project before this script took it (it runs the branch's copy).
    branch = sys.argv[4] if len(sys.argv) > 4 else "template-update"
    fields = {"title": f"Draft: {title}" if draft else title, "description": body_file.read_text(encoding="utf-8")}
    query = urllib.parse.urlencode({"state": "opened", "source_branch": branch})
    existing = api("GET", f"/merge_requests?{query}")
    if existing:
        merge_request = api("PUT", f"/merge_requests/{existing[0]['iid']}", fields)
    else:
        fields |= {"source_branch": branch, "target_branch": os.environ["CI_DEFAULT_BRANCH"]}
        merge_request = api("POST", "/merge_requests", fields)
    print(merge_request["web_url"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
