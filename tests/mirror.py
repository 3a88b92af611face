"""A local download mirror for MNIST and Fashion-MNIST, on 127.0.0.1 only.

It serves ``/<folder>/<name>.gz`` (torchvision's archive names) compressed from the raw IDX files
of a data root, so tests can exercise downloads without the internet. The archives are not the
original ones (their MD5s differ); the package checks the decompressed content, which is equal.

``Mirror.truncate`` makes the server send only the first half of every archive and then close the
connection, as an interrupted download would.

Run as a script (``python tests/mirror.py DATA_ROOT``) it prints its URL and serves until killed.
"""

from __future__ import annotations

import gzip
import http.server
import sys
import threading
from pathlib import Path

FOLDERS = ("MNIST", "FashionMNIST")


class Mirror:
    """Serve gzip archives of ``data_root``'s raw files on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, data_root: Path) -> None:
        self.archives: dict[str, bytes] = {}
        for folder in FOLDERS:
            for path in sorted((Path(data_root) / folder / "raw").glob("*-ubyte")):
                self.archives[f"/{folder}/{path.name}.gz"] = gzip.compress(path.read_bytes(), compresslevel=1)
        self.requests: list[str] = []
        self.truncate = False
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                mirror.requests.append(self.path)
                body = mirror.archives.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mirror.truncate else body)
                self.close_connection = True

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def mirrors(self, folder: str) -> list[str]:
        """The mirror list to give torchvision's dataset class for ``folder``."""
        return [f"{self.url}/{folder}/"]

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    with Mirror(Path(sys.argv[1])) as served:
        print(served.url, flush=True)
        threading.Event().wait()
