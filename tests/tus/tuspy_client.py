"""tuspy against the gateway's /tus/ endpoint (driven by gateway/tests/tus.rs).

    tuspy_client.py whole   BASE FILE KEY CHUNK         upload all of FILE
    tuspy_client.py partial BASE FILE KEY CHUNK STOP    stop at offset STOP
    tuspy_client.py resume  URL  FILE CHUNK             a NEW uploader continues URL
    tuspy_client.py cut     BASE FILE KEY SEND          create, then PATCH all of
                                                        FILE but cut the connection
                                                        after SEND bytes

Every command prints one JSON line: {"url": ..., "offset": ...}. Each chunk
carries an md5 Upload-Checksum (tuspy's checksum hook, md5 instead of its
default sha1), so the gateway checks every PATCH.
"""

import hashlib
import json
import socket
import sys
from urllib.parse import urlsplit

from tusclient import client
from tusclient.uploader import Uploader


class Md5Uploader(Uploader):
    CHECKSUM_ALGORITHM_PAIR = ("md5", hashlib.md5)


def uploader(base, path, chunk, **kw):
    c = client.TusClient(base.rstrip("/") + "/tus/")
    return Md5Uploader(path, client=c, chunk_size=chunk, upload_checksum=True, **kw)


def out(url, offset):
    print(json.dumps({"url": url, "offset": offset}), flush=True)


def main(argv):
    cmd = argv[1]
    if cmd in ("whole", "partial"):
        base, path, key, chunk = argv[2], argv[3], argv[4], int(argv[5])
        up = uploader(base, path, chunk, metadata={"filename": key})
        up.upload(stop_at=int(argv[6]) if cmd == "partial" else None)
        out(up.url, up.offset)
    elif cmd == "resume":
        url, path, chunk = argv[2], argv[3], int(argv[4])
        # Given the URL, tuspy asks the server for the offset (HEAD) and
        # continues from there: nothing of the first uploader is reused.
        up = uploader(url.split("/tus/")[0], path, chunk, url=url)
        started = up.offset
        up.upload()
        print(json.dumps({"url": up.url, "offset": up.offset, "resumed_from": started}), flush=True)
    elif cmd == "cut":
        base, path, key, send = argv[2], argv[3], argv[4], int(argv[5])
        up = uploader(base, path, 1 << 30, metadata={"filename": key})
        up.set_url(up.create_url())
        data = open(path, "rb").read()
        u = urlsplit(up.url)
        s = socket.create_connection((u.hostname, u.port))
        head = (
            f"PATCH {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n"
        )
        s.sendall(head.encode())
        # The gateway asks for the body once the PATCH holds the upload and
        # knows its offset, so what follows is that PATCH's for sure.
        got = b""
        while b"\r\n\r\n" not in got:
            more = s.recv(4096)
            if not more:
                sys.exit("the gateway closed before 100 Continue")
            got += more
        if not got.startswith(b"HTTP/1.1 100"):
            sys.exit(f"expected 100 Continue, got {got!r}")
        s.sendall(data[:send])
        # The network drops: no more bytes, the connection goes.
        s.shutdown(socket.SHUT_RDWR)
        s.close()
        out(up.url, send)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
