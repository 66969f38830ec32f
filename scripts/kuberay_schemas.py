"""Copy the openAPIV3Schema of KubeRay's CRDs (ray.io/v1) into tests/data/kuberay, for the manifest
tests to validate cluster/kuberay/*.yaml against the operator's own schemas.

    git clone https://github.com/ray-project/kuberay && (cd kuberay && git fetch --tags)
    python scripts/kuberay_schemas.py kuberay v1.5.1 v1.7.0

For each tag, writes tests/data/kuberay/<tag>/<Kind>.json.gz: the schema of served version v1 of
ray-operator/config/crd/bases/ray.io_*.yaml as it is at that tag, with the human-readable
`description` strings dropped (they are 90 % of the bytes and carry no constraint). KubeRay is
Apache-2.0 licensed; the schemas are derived from its CRDs unchanged otherwise.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "kuberay")
BASES = "ray-operator/config/crd/bases"


def strip(node):
    """The schema without its description texts (a *property* named description is kept)."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main(repo: str, tags: list[str]):
    for tag in tags:
        os.makedirs(os.path.join(OUT, tag), exist_ok=True)
        for path in git(repo, "ls-tree", "--name-only", tag, BASES + "/").split():
            crd = yaml.safe_load(git(repo, "show", f"{tag}:{path}"))
            kind = crd["spec"]["names"]["kind"]
            (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            out = os.path.join(OUT, tag, f"{kind}.json.gz")
            data = json.dumps(strip(v1["schema"]["openAPIV3Schema"]), sort_keys=True, separators=(",", ":"))
            with gzip.GzipFile(out, "wb", mtime=0) as f:  # mtime 0: the same bytes on every run
                f.write(data.encode())
            print(f"{out}: {os.path.getsize(out):,} bytes")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
