#!/usr/bin/env python3
"""Writes container images as one OCI image archive that `ctr images import` loads, without a
container engine or a registry (none can run or be reached here).

Reads a JSON description on stdin:

    {"out": "ARCHIVE.tar",
     "images": [{"name": "localhost/homeplane/redis:8",
                 "layers": ["ROOTFS.tar", {"files": [...]}],
                 "config": {"Entrypoint": [...], "Cmd": [...], "Env": [...], "User": "..."}}]}

A layer is a tar file (used as it is, e.g. a root file system from mmdebstrap) or a list of
files to put in a new layer: {"path": "/bin/x", "src": "HOST FILE", "mode": 493},
{"path": "/bin/sh", "link": "busybox"} or {"path": "/data", "dir": true, "mode": 511}.
Layers shared by several images (the same tar file) are stored once. New layers are
deterministic (fixed owners and times), so the same inputs give the same digests.
"""

import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def digest_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)


def new_layer(files, tmp):
    """A deterministic tar of `files` (parent folders added as needed)."""
    fd, path = tempfile.mkstemp(suffix=".tar", dir=tmp)
    os.close(fd)
    seen = set()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_dirs(p):
            parts = p.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)

        for entry in sorted(files, key=lambda e: e["path"]):
            name = entry["path"].strip("/")
            add_dirs(entry["path"])
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid = 0, entry.get("uid", 0), entry.get("gid", 0)
            if "link" in entry:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry["link"], 0o777
                tar.addfile(info)
            elif entry.get("dir"):
                seen.add(name)
                info.type, info.mode = tarfile.DIRTYPE, entry.get("mode", 0o755)
                tar.addfile(info)
            else:
                info.size = os.path.getsize(entry["src"])
                info.mode = entry.get("mode", 0o644)
                with open(entry["src"], "rb") as f:
                    tar.addfile(info, f)
    return path


def main():
    spec = json.load(sys.stdin)
    out = spec["out"]
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as tmp:
        blobs = {}  # digest -> file to copy into the archive
        small = {}  # digest -> bytes (configs, manifests)
        manifests = []
        for image in spec["images"]:
            descriptors, diff_ids = [], []
            for layer in image["layers"]:
                path = layer if isinstance(layer, str) else new_layer(layer["files"], tmp)
                digest, size = digest_of(path)
                blobs.setdefault(digest, path)
                diff_ids.append(digest)
                descriptors.append({"mediaType": LAYER_TYPE, "digest": digest, "size": size})
            config = {
                "architecture": ARCH,
                "os": "linux",
                "config": image.get("config", {}),
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
            config_bytes = json.dumps(config, sort_keys=True).encode()
            config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
            small[config_digest] = config_bytes
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config_bytes),
                },
                "layers": descriptors,
            }
            manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
            manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
            small[manifest_digest] = manifest_bytes
            manifests.append({
                "mediaType": manifest["mediaType"],
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": ARCH, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": image["name"],
                    "org.opencontainers.image.ref.name": image["name"].rsplit(":", 1)[-1],
                },
            })
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }
        partial = out + ".partial"
        with tarfile.open(partial, "w") as tar:

            def add_bytes(name, data):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))

            add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            add_bytes("index.json", json.dumps(index, sort_keys=True).encode())
            for digest, data in sorted(small.items()):
                add_bytes("blobs/sha256/" + digest.split(":", 1)[1], data)
            for digest, path in sorted(blobs.items()):
                info = tar.gettarinfo(path, "blobs/sha256/" + digest.split(":", 1)[1])
                info.mtime, info.mode, info.uid, info.gid = 0, 0o644, 0, 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        os.replace(partial, out)
    for m in manifests:
        print(m["annotations"]["io.containerd.image.name"], m["digest"])


if __name__ == "__main__":
    main()
