"""``python tests/moto_s3.py HOST PORT``: moto's S3 server with one answer fixed for pyarrow.

moto 5.1/5.2 answers CompleteMultipartUpload with a ``<CompleteMultipartUploadResponse>`` root
(getmoto/moto#10055); Arrow's S3 client (rightly) takes any root other than
``<CompleteMultipartUploadResult>`` for an error embedded in a 200 and fails every upload. This
WSGI wrapper renames that root; everything else is moto's server mode as ``moto_server`` runs it.
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

_WRONG, _RIGHT = b"CompleteMultipartUploadResponse", b"CompleteMultipartUploadResult"


def fixed(app):
    def wrapped(environ, start_response):
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture))
        headers = captured["headers"]
        if _WRONG in body:  # (a HEAD answer has no body but a Content-Length: leave the others alone)
            body = body.replace(_WRONG, _RIGHT)
            headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
        start_response(captured["status"], headers)
        return [body]

    return wrapped


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    run_simple(host, port, fixed(DomainDispatcherApplication(create_backend_app)), threaded=True,
               use_reloader=False)
