#!/usr/bin/env python3
"""Builds the node's container images on this machine, from Debian's files, as docker-archive
tarballs that `ctr images import` reads. Nothing is pulled from a registry.

    images.py OUT_DIR

writes OUT_DIR/<name>.tar for each image below:
  stackplane.local/pause:1    the pod sandbox (pause.c, built statically)
  stackplane.local/httpd:1    busybox httpd answering on $PORT (default 8080) as nobody
  stackplane.local/pgdump:15  pg_dump 15 with the libraries it links, and busybox's shell tools
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUSYBOX = "/bin/busybox"
PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"
NOBODY = "65534:65534"
# The busybox applets the images' shell scripts use (the dump Job's sweep and size report).
APPLETS = ["sh", "cat", "echo", "find", "rm", "mkdir", "basename", "wc", "ls", "sleep",
           "httpd", "stat", "test", "["]


class Layer:
    """One image layer: files copied from the host, files with given content, symlinks, dirs."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.GNU_FORMAT)
        self.seen = set()

    def _dirs(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, path, mode=0o755):
        path = path.strip("/")
        if path in self.seen:
            return
        self._dirs(path)
        self.seen.add(path)
        info = tarfile.TarInfo(path)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self.tar.addfile(info)

    def data(self, path, content, mode=0o644):
        path = path.strip("/")
        self._dirs(path)
        self.seen.add(path)
        info = tarfile.TarInfo(path)
        info.size = len(content)
        info.mode = mode
        self.tar.addfile(info, io.BytesIO(content))

    def copy(self, host_path, path=None):
        path = (path or host_path).strip("/")
        if path in self.seen:
            return
        with open(os.path.realpath(host_path), "rb") as f:
            self.data(path, f.read(), mode=0o755)

    def link(self, path, target):
        path = path.strip("/")
        self._dirs(path)
        self.seen.add(path)
        info = tarfile.TarInfo(path)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self.tar.addfile(info)

    def binary(self, host_path):
        """The binary and every library `ldd` says it loads (at the same paths)."""
        self.copy(host_path)
        out = subprocess.run(["ldd", host_path], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if lib.startswith("/"):
                self.copy(lib)

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()


def base(layer):
    """busybox-static as /bin/busybox with the applets, /tmp, and nobody in /etc/passwd."""
    layer.copy(BUSYBOX)
    for applet in APPLETS:
        layer.link(f"bin/{applet}", "busybox")
    layer.dir("tmp", 0o1777)
    layer.data("etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    layer.data("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    layer.data("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")


def pause_layer(workdir):
    exe = os.path.join(workdir, "pause")
    subprocess.run(["gcc", "-static", "-O2", "-o", exe, os.path.join(HERE, "pause.c")], check=True)
    layer = Layer()
    layer.copy(exe, "pause")
    return layer, {"Entrypoint": ["/pause"], "User": NOBODY}


def httpd_layer(_workdir):
    layer = Layer()
    base(layer)
    layer.data("www/index.html", b"stackplane component: served by busybox httpd on a real node\n")
    # The shell stays PID 1 and exits on TERM: httpd as PID 1 would ignore it, and every pod
    # deletion would wait out its grace period.
    cmd = 'trap "exit 0" TERM INT; /bin/busybox httpd -f -v -p "${PORT:-8080}" -h /www & wait'
    return layer, {"Entrypoint": ["/bin/sh", "-c", cmd], "User": NOBODY}


def pgdump_layer(_workdir):
    layer = Layer()
    base(layer)
    layer.binary(PG_DUMP)
    env = ["PATH=/usr/lib/postgresql/15/bin:/bin"]
    return layer, {"Entrypoint": ["/bin/sh"], "User": NOBODY, "Env": env}


IMAGES = {
    "pause": ("stackplane.local/pause:1", pause_layer),
    "httpd": ("stackplane.local/httpd:1", httpd_layer),
    "pgdump": ("stackplane.local/pgdump:15", pgdump_layer),
}


def archive(out, tag, layer_bytes, config):
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    env = config.pop("Env", ["PATH=/bin"])
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config, Env=env, WorkingDir="/"),
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "tests/harness/node/images.py"}],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w") as t:
        for name, content in [
            (config_name, config_bytes),
            (f"{diff_id}/layer.tar", layer_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    os.replace(tmp, out)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name, (tag, build) in IMAGES.items():
            layer, config = build(work)
            archive(os.path.join(out_dir, f"{name}.tar"), tag, layer.bytes(), config)
            print(f"{tag} -> {out_dir}/{name}.tar")


if __name__ == "__main__":
    main()
