"""A GCS JSON API server on 127.0.0.1 for tests: PyPI's gcp-storage-emulator, in memory.

    python tests/gcs_emulator.py PORT BUCKET   # serves until killed; prints "ready" when up

The emulator ignores GCS's generation preconditions and sends no generation header with an
object's bytes. Clients rely on both: tensorstore's OCDBT (Orbax's array store) updates its
manifest by compare-and-swap, reading it with `ifGenerationNotMatch` and writing it with
`ifGenerationMatch`, and fails with "Malformed StorageGeneration" without the header; the
workdir lease is created with `ifGenerationMatch=0`. So this wrapper answers those
preconditions as the GCS documentation says (412 Precondition Failed, 304 Not Modified for a
read) and adds `x-goog-generation` to object reads. The tests then show that simlap and
Orbax send the preconditions and handle the answers; how GCS itself behaves, they cannot.

The emulator also parses a multipart upload with Python's email parser, which treats a lone
CR as a line end: an object ending in b"\r" (gcsfs puts "\n--boundary" after the bytes) lost
that byte, 1 upload in 256 of binary data. This wrapper splits the body at the boundary with
the line ending the client uses.
"""
from __future__ import annotations

import email.message
import http
import json
import sys
import threading


def _object(request) -> tuple[str, str | None]:
  """(bucket, object name) a request is about; the name is None when it cannot be told."""
  params = request.params or {}
  name = params.get("object_id") or (request.query.get("name") or [None])[0]
  if name is None and request.method == "POST":
    data = request.data  # read the body in any case: it must not stay in the connection
    if isinstance(data, dict):
      name = (data.get("meta") or data).get("name")
  return params.get("bucket_name", ""), name


def _with_preconditions(handler, is_read: bool):
  def checked(request, response, storage, *args, **kwargs):
    if request.method == "POST":
      _ = request.data  # read the body before any early answer
    bucket, name = _object(request)
    try:
      current = storage.get_file_obj(bucket, name)["generation"] if name else None
    except Exception:  # pylint: disable=broad-except - the emulator's NotFound
      current = None
    match = (request.query.get("ifGenerationMatch") or [None])[0]
    not_match = (request.query.get("ifGenerationNotMatch") or [None])[0]
    # A read of a missing object is a 404 (the handler's), whatever its preconditions.
    failed = not (is_read and current is None) and (
        (match is not None and (current or "0") != match)
        or (not_match is not None and (current or "0") == not_match))
    if failed:
      response.status = (http.HTTPStatus.NOT_MODIFIED if is_read and match is None
                         else http.HTTPStatus.PRECONDITION_FAILED)
      return None
    out = handler(request, response, storage, *args, **kwargs)
    if is_read and current is not None:
      response["x-goog-generation"] = current
    return out
  return checked


def _multipart_related(body: bytes, content_type: str) -> dict:
  """A multipart upload's {"meta", "content", "content-type"}, as the emulator's handlers take
  it: its JSON part and the object's bytes, cut exactly at the delimiters."""
  header = email.message.Message()
  header["content-type"] = content_type
  opening = b"--" + header.get_param("boundary").encode()
  body = body[body.index(opening):]  # after any preamble
  eol = b"\r\n" if body[len(opening):].startswith(b"\r\n") else b"\n"
  pieces = body[len(opening) + len(eol):].split(eol + opening)
  parts = []
  for piece in pieces[:-1]:  # the last one is the closing "--" and what follows it
    headers, _, content = piece.lstrip(b"\r\n").partition(eol + eol)
    message = email.message_from_bytes(headers + b"\n\n")
    parts.append((message.get_content_type(), content))
  (_, meta), (kind, content) = parts
  return {"meta": json.loads(meta), "content": content, "content-type": kind}


def _exact_multipart(read_data):
  def read(request_handler, query):
    kind = request_handler.headers.get("Content-Type") or ""
    if not kind.startswith("multipart/related"):
      return read_data(request_handler, query)
    from gcp_storage_emulator import server  # noqa: PLC0415
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)  # noqa: SLF001
    return _multipart_related(raw, kind) if raw else None
  return read


def main(port: int, bucket: str) -> None:
  from gcp_storage_emulator import server  # noqa: PLC0415 - only when a test starts one
  from gcp_storage_emulator.handlers import objects  # noqa: PLC0415
  wrapped = {objects.insert: _with_preconditions(objects.insert, is_read=False),
             objects.get: _with_preconditions(objects.get, is_read=True),
             objects.download: _with_preconditions(objects.download, is_read=True)}
  for _, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
      if fn in wrapped:
        handlers[method] = wrapped[fn]
  objects.insert = wrapped[objects.insert]  # the router's fallback for some upload paths
  server._read_data = _exact_multipart(server._read_data)  # noqa: SLF001
  emulator = server.Server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  emulator.start()
  print("ready", flush=True)
  threading.Event().wait()  # until killed


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
