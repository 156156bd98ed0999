"""A loopback stand-in for NDIF, for the remote-backend tests.

Run as a separate process, like the real service, where ``ihs_sight`` is NOT importable::

    python -I tests/ndif_server.py MODEL_DIR [--port 0] [--fail none|error|drop|slow|nan|shape|...]
                                            [--fail-after N] [--min-version X.Y.Z] [--threads 1]

It speaks the part of nnsight 0.8's NDIF protocol the blocking and polling clients use:

* ``GET /subscribe``: a websocket; the first text frame is ``{"session_id": ...}``, then each
  job status of that session arrives as a frame (the finished result as a binary frame);
* ``POST /request``: multipart, ``data`` (a ``RequestModel`` as JSON) and ``blob`` (the
  serialised trace); answered with the RECEIVED status, the job then runs in a thread;
* ``GET /response/{id}`` (polling) and ``GET /result/{id}`` (the result bytes).

A job deserialises the trace against the one model this process serves (loaded from the
safetensors directory on the command line), executes it, and returns the names the trace
body bound to saved values, ``torch.save``-d and zstd-compressed when the client asked for compression.

Fault injection (``--fail``; only jobs after the first ``--fail-after`` ones fail):
``error`` answers ERROR with a server message, ``drop`` closes the websocket mid-job,
``slow`` never finishes; ``nan`` and ``shape`` return a spoiled result (a NaN in the first
saved tensor; every saved list one item short and every saved tensor one column short);
``key_in_error`` answers ERROR quoting the API key the request carried, and ``key_refused``
refuses the submission (HTTP 401) quoting it, as a careless server might.
``--min-version`` rejects older clients as NDIF does.
``POST /control`` with JSON ``{"fail": ..., "fail_after": ..., "min_version": ...}`` changes
these settings and resets the job count; ``GET /control`` reports ``{"jobs": n, "fail": ...}``.

It prints ``READY <port>`` on stdout once it serves.
"""

from __future__ import annotations

import sys

# NDIF has torch and nnsight but not ihs_sight. An editable install makes the package
# importable from any interpreter through a meta-path finder and a path entry; drop both, so
# a trace body that needs ihs_sight fails here exactly as it would there.
_REPO = __file__.rsplit("/", 2)[0] if __file__.count("/") >= 2 else "."
sys.meta_path[:] = [f for f in sys.meta_path if "ihs_sight" not in repr(f)]
sys.path[:] = [p for p in sys.path if "__editable__" not in p and p.rstrip("/") not in (_REPO, "")]
for _name in [m for m in sys.modules if "ihs_sight" in m]:
    del sys.modules[_name]

import argparse
import base64
import email.parser
import email.policy
import hashlib
import importlib.util
import io
import json
import os
import struct
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

assert importlib.util.find_spec("ihs_sight") is None, "ihs_sight must not be importable on the fake NDIF server"

import torch
import zstandard
from nnsight.schema.request import RequestModel
from nnsight.schema.response import ResponseModel, Status
from nnsight.tracing.tracer import _saves, dec, inc

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Server:
    """Shared state: the model, the open sessions, job statuses and results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model: Any = None
        self.served_id = os.path.abspath(args.model_dir)
        self.sessions: dict[str, tuple[Any, threading.Lock]] = {}
        self.responses: dict[str, ResponseModel] = {}
        self.results: dict[str, bytes] = {}
        self.run_lock = threading.Lock()
        self.jobs = 0
        self.port = 0

    # -- websocket frames (server side: unmasked) --
    @staticmethod
    def frame(session: tuple[Any, threading.Lock], opcode: int, payload: bytes) -> None:
        sock, lock = session
        size = len(payload)
        if size < 126:
            header = bytes([0x80 | opcode, size])
        elif size < 1 << 16:
            header = bytes([0x80 | opcode, 126]) + struct.pack(">H", size)
        else:
            header = bytes([0x80 | opcode, 127]) + struct.pack(">Q", size)
        with lock:
            sock.sendall(header + payload)

    def publish(self, job: str, session_id: str | None, status: Status, text: str = "", blob: bytes | None = None) -> None:
        session = self.sessions.get(session_id or "")
        if blob is not None:
            if session is not None:
                self.frame(session, 0x2, ResponseModel(id=job, status=status, description=text, data=blob).pickle())
            self.responses[job] = ResponseModel(
                id=job, status=status, description=text, data=f"http://127.0.0.1:{self.port}/result/{job}"
            )
            return
        response = ResponseModel(id=job, status=status, description=text)
        self.responses[job] = response
        if session is not None:
            self.frame(session, 0x1, response.model_dump_json().encode())

    def run(self, job: str, request: RequestModel, blob: bytes, number: int, key: str) -> None:
        fail = self.args.fail if number > self.args.fail_after else "none"
        sid = request.session_id
        try:
            self.publish(job, sid, Status.QUEUED, "queued")
            if fail == "slow":
                time.sleep(3600)
            if fail == "drop":
                session = self.sessions.get(sid or "")
                if session is not None:
                    session[0].shutdown(2)  # the connection dies mid-job
                return
            if fail == "error":
                raise RuntimeError("injected failure: the worker ran out of memory")
            if fail == "key_in_error":
                raise PermissionError(f"injected failure: key {key} has no access to this model")
            with self.run_lock:
                self.publish(job, sid, Status.RUNNING, "running")
                self.model._remoteable_set_env(request.env)
                tracer = RequestModel.deserialize(
                    blob, self.model._remoteable_persistent_objects(), compress=request.compress
                )
                frame = tracer.info.frame
                before = dict(frame.f_locals)
                inc()
                try:
                    tracer.execute(tracer.info.code)
                    # Only what the body saved goes back, as from NDIF: the ids marked by save().
                    saved = _saves()
                    bound = {k: v for k, v in frame.f_locals.items()
                             if (k not in before or before[k] is not v) and id(v) in saved}
                finally:
                    dec()
            if fail in ("nan", "shape"):
                bound = {k: _spoil(v, fail) for k, v in bound.items()}
            buffer = io.BytesIO()
            torch.save(bound, buffer)
            out = buffer.getvalue()
            if request.compress:
                out = zstandard.ZstdCompressor(level=3).compress(out)
            self.results[job] = out
            self.publish(job, sid, Status.COMPLETED, f"{len(out)} bytes", blob=out)
        except Exception as error:  # noqa: BLE001 (reported to the client, as NDIF does)
            tail = traceback.format_exc()[-600:]
            try:
                self.publish(job, sid, Status.ERROR, f"{type(error).__name__}: {error}\n{tail}")
            except OSError:
                pass


def _spoil(value: Any, fail: str) -> Any:
    """A saved value made wrong: ``nan`` in its first float tensor, or one item / column short (``shape``)."""
    if isinstance(value, list):
        if fail == "shape":
            return value[:-1]
        return [_spoil(value[0], fail), *value[1:]] if value else value
    if isinstance(value, torch.Tensor):
        if fail == "shape" and value.dim() >= 1:
            return value[..., :-1].clone()
        if fail == "nan" and value.is_floating_point() and value.numel():
            value = value.clone()
            value.view(-1)[0] = float("nan")
    return value


def make_handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def reply(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def subscribe(self) -> None:
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
            self.wfile.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.wfile.flush()
            sid = uuid.uuid4().hex
            session = (self.connection, threading.Lock())
            server.sessions[sid] = session
            server.frame(session, 0x1, json.dumps({"session_id": sid}).encode())
            try:
                while True:  # read (and ignore) client frames until it closes
                    head = self.rfile.read(2)
                    if len(head) < 2:
                        break
                    size = head[1] & 0x7F
                    if size == 126:
                        size = struct.unpack(">H", self.rfile.read(2))[0]
                    elif size == 127:
                        size = struct.unpack(">Q", self.rfile.read(8))[0]
                    self.rfile.read(4 + size)
                    if head[0] & 0x0F == 0x8:
                        server.frame(session, 0x8, b"")
                        break
            except OSError:
                pass
            finally:
                server.sessions.pop(sid, None)
                self.close_connection = True

        def do_GET(self) -> None:
            if self.path.startswith("/subscribe"):
                self.subscribe()
            elif self.path.startswith("/response/"):
                found = server.responses.get(self.path.rsplit("/", 1)[1])
                self.reply(404, b"{}") if found is None else self.reply(200, found.model_dump_json().encode())
            elif self.path.startswith("/result/"):
                data = server.results.get(self.path.rsplit("/", 1)[1])
                self.reply(404, b"{}") if data is None else self.reply(200, data, "application/octet-stream")
            elif self.path == "/control":
                self.reply(200, json.dumps({"jobs": server.jobs, "fail": server.args.fail}).encode())
            elif self.path == "/ping":
                self.reply(200, b'"pong"')
            else:
                self.reply(404, b"{}")

        def refuse(self, code: int, detail: str) -> None:
            self.reply(code, json.dumps({"detail": detail}).encode())

        def do_POST(self) -> None:
            if self.path == "/control":  # tests switch fault modes without a restart
                settings = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                for name in ("fail", "fail_after", "min_version"):
                    if name in settings:
                        setattr(server.args, name, settings[name])
                server.jobs = 0
                return self.reply(200, b"{}")
            if self.path != "/request":
                return self.reply(404, b"{}")
            body = self.rfile.read(int(self.headers["Content-Length"]))
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
            )
            parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                     for p in message.iter_parts()}
            request = RequestModel.model_validate_json(parts["data"])
            client = self.headers.get("nnsight-version") or "0"
            if server.args.min_version and _version(client) < _version(server.args.min_version):
                return self.refuse(
                    400, f"Client nnsight version {client} is older than the minimum {server.args.min_version}; upgrade."
                )
            key = self.headers.get("ndif-api-key") or ""
            if server.args.fail == "key_refused":
                return self.refuse(401, f"API key {key} is not valid for this deployment.")
            repo_id = json.loads(request.model_key.split(":", 1)[1]).get("repo_id")
            if os.path.abspath(str(repo_id)) != server.served_id:
                return self.refuse(404, f"Model {repo_id!r} is not served on this deployment.")
            job = uuid.uuid4().hex
            server.jobs += 1
            received = ResponseModel(id=job, status=Status.RECEIVED, description="received")
            server.responses[job] = received
            self.reply(200, received.model_dump_json().encode())
            threading.Thread(target=server.run, args=(job, request, parts["blob"], server.jobs, key), daemon=True).start()
            return None

    return Handler


def _version(text: str) -> tuple[int, ...]:
    out = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail", default="none", choices=["none", "error", "drop", "slow", "nan", "shape",
                                                           "key_in_error", "key_refused"])
    parser.add_argument("--fail-after", type=int, default=0)
    parser.add_argument("--min-version", default="")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    server = Server(args)
    hf = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    server.model = TransformersModel(hf, tokenizer=tokenizer)
    http = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(server))
    http.daemon_threads = True
    server.port = http.server_address[1]
    print(f"READY {server.port}", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
