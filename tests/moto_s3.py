"""``python tests/moto_s3.py HOST``: moto's S3 server (one thread per connection) with one answer fixed for
pyarrow; it binds a free port on HOST and prints that port on stdout.

* moto 5.1/5.2 answers CompleteMultipartUpload with a ``<CompleteMultipartUploadResponse>`` root
  (getmoto/moto#10055); Arrow's S3 client (rightly) takes any root other than
  ``<CompleteMultipartUploadResult>`` for an error embedded in a 200 and fails every upload. The WSGI
  wrapper :func:`fixed` renames that root; everything else is moto's server mode as ``moto_server`` runs it.
* No request log: werkzeug writes a line per request to stderr, and a parent that does not drain a
  stderr pipe stops the server after ~64 KiB of them (~500 requests: every handler thread blocks in
  ``write``). Errors still go to stderr, which :class:`s3server.MotoServer` sends to a file.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server

_WRONG, _RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


def fixed(app):
    def wrapped(environ, start_response):
        captured: dict = {}
        written: list[bytes] = []

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return written.append  # the (legacy) write() callable: keep what it is given

        body = b"".join([*written, *app(environ, capture)])
        headers = captured["headers"]
        if _WRONG in body:  # (a HEAD answer has no body but a Content-Length: leave the others alone)
            body = body.replace(_WRONG, _RIGHT)
            headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
        start_response(captured["status"], headers)
        return [body]

    return wrapped


class _Quiet(WSGIRequestHandler):
    def log_request(self, code="-", size="-") -> None:  # noqa: ANN001 - werkzeug's signature
        pass


if __name__ == "__main__":
    server = make_server(sys.argv[1], 0, fixed(DomainDispatcherApplication(create_backend_app)), threaded=True,
                         request_handler=_Quiet)
    server.daemon_threads = True  # a connection a killed client left open never keeps the server from exiting
    print(server.socket.getsockname()[1], flush=True)
    server.serve_forever()
