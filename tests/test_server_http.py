"""Reward server over HTTP: bad requests refused with the right 4xx, limits and timeouts, the wire codec.

Every server here binds 127.0.0.1 on an ephemeral port and runs in this process.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import socket
import struct
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from evalsuite import ConfigError, Sample, UnknownNameError
from evalsuite.images import MAX_PIXELS, ImageFailure
from evalsuite.remote import RemoteReward, RemoteRewardError
from evalsuite.rewards.brightness import Brightness
from evalsuite.server import RewardServer
from evalsuite.wire import PNG_SIGNATURE, SAMPLE_FIELDS, decode_image, dumps, loads, to_wire
from tests.server_support import (
    LIMIT,
    assert_same_output,
    b64,
    encoded,
    make_multi,
    noise,
    request,
    shared_server,
    stats,
    wire_sample,
)


@pytest.fixture(scope="module")
def server():
    with shared_server() as srv:
        yield srv

# -- refused requests ------------------------------------------------------------------------------
PNG = b64(encoded(noise(8, 8, 0)))
BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"{}", "missing field 'samples'"),
    (b'{"samples": 3}', "'samples' must be a list"),
    (b'{"samples": [], "extra": 1}', "unknown top-level fields"),
    (b'{"samples": [1]}', "samples[0]: expected an object"),
    (b'{"samples": [{"id": "a"}]}', "samples[0]: missing field 'prompt'"),
    (b'{"samples": [{"prompt": "p"}]}', "missing field 'id'"),
    (b'{"samples": [{"id": "a", "prompt": "p", "colour": 1}]}', "unknown fields ['colour']"),
    (b'{"samples": [{"id": "a", "prompt": "p", "metadata": [1]}]}', "metadata: expected an object"),
    (b'{"samples": [{"id": "a", "prompt": "p", "image": 7}]}', "image: expected a base64 PNG"),
    (b'{"samples": [{"id": "a", "prompt": "p", "image": "@@not base64@@"}]}', "invalid base64"),
    (b'{"samples": [{"id": "a", "prompt": "p", "image": {"png": "x"}}]}', "image object must be"),
    (b'{"samples": [{"id": "a", "prompt": "p", "group": [1]}]}', "group: expected a string"),
    (b'{"samples": [{"id": "a", "prompt": "p", "seed": NaN}]}', "NaN is not JSON"),
    (b'{"samples": [{"id": "a", "prompt": "p", "metadata": {"x": {"$float": "zero"}}}]}', "malformed tagged"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_malformed_body_is_400_with_message(server, body, message):
    status, reply = request(server, "POST", "/score/brightness", body)
    assert status == 400 and message in reply["error"] and reply["status"] == 400
    status, reply = request(server, "GET", "/health")  # still serving
    assert status == 200 and reply["status"] == "ok"


@pytest.mark.parametrize(("method", "path", "headers", "status", "message"), [
    ("POST", "/score/nope", {}, 404, "no reward named 'nope'"),
    ("POST", "/elsewhere", {}, 404, "no such endpoint"),
    ("GET", "/rewards/nope", {}, 404, "no reward named 'nope'"),
    ("GET", "/score/brightness", {}, 405, "use POST"),
    ("POST", "/health", {}, 405, "use GET"),
    ("DELETE", "/score/brightness", {}, 405, "not allowed"),
    ("POST", "/score/brightness", {"Content-Type": "text/plain"}, 415, "application/json"),
    ("POST", "/score/brightness", {"Content-Length": "-3"}, 400, "bad Content-Length"),
])
def test_bad_route_method_or_headers(server, method, path, headers, status, message):
    got, reply = request(server, method, path, b'{"samples": []}' if method == "POST" else None, headers)
    assert got == status and message in reply["error"]
    assert request(server, "POST", "/score/brightness", b'{"samples": []}')[0] == 200


def test_missing_content_length_is_411(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/score/brightness")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    conn.close()


def test_oversized_body_is_413_and_server_keeps_serving(server):
    body = json.dumps({"samples": [wire_sample("big", "A" * (LIMIT + 10))]}).encode()
    status, reply = request(server, "POST", "/score/brightness", body)
    assert status == 413 and "max_body_bytes" in reply["error"] and str(LIMIT) in reply["error"]
    # one sample too big for the server: the client says so instead of hanging or dropping it
    huge = Sample("huge", "p", noise(400, 400, 1))
    with pytest.raises(RemoteRewardError, match="HTTP 413"):
        RemoteReward(server.url, "brightness").score([huge])
    small = [Sample("ok", "p", noise(8, 8, 2))]
    assert_same_output(Brightness().score(small), RemoteReward(server.url, "brightness").score(small))


def test_undecodable_images_are_per_sample_errors(server):
    bomb = Image.new("1", (9000, 9000))  # 81 M pixels > MAX_PIXELS, a few KB as PNG
    good = encoded(noise(12, 12, 3))
    samples = [
        wire_sample("good", b64(good)),
        wire_sample("garbage", b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)),
        wire_sample("truncated", b64(good[: len(good) // 2])),
        wire_sample("jpeg", b64(encoded(noise(12, 12, 4), "JPEG"))),
        wire_sample("client-error", {"error": "sample 'client-error': unreadable"}),
        wire_sample("bomb", b64(encoded(bomb))),
        wire_sample("good-again", b64(good)),
    ]
    status, reply = request(server, "POST", "/score/brightness", json.dumps({"samples": samples}).encode())
    assert status == 200
    errors = reply["errors"]
    assert errors[0] is None and errors[-1] is None
    assert reply["scores"][0] == Brightness().score([Sample("x", "p", good)]).scores[0]
    assert "'garbage'" in errors[1] and "'truncated'" in errors[2]
    assert "not a PNG" in errors[3] and errors[4] == "sample 'client-error': unreadable"
    assert f"9000x9000 exceeds {MAX_PIXELS} pixels" in errors[5]
    assert reply["scores"][1:6] == [None] * 5 and reply["applicable"][1:6] == [False] * 5


def test_client_packs_requests_by_size_and_count(server):
    samples = [Sample(f"n{i}", "p", noise(160, 160, 30 + i)) for i in range(6)]  # ~100 KB of base64 each
    before = stats(server, "brightness")["requests"]
    assert_same_output(Brightness().score(samples), RemoteReward(server.url, "brightness").score(samples))
    assert stats(server, "brightness")["requests"] - before >= 3  # never more than LIMIT per request
    small = [Sample(f"m{i}", "p", noise(8, 8, i)) for i in range(5)]
    before = stats(server, "brightness")["requests"]
    remote = RemoteReward(server.url, "brightness", batch_size=2)
    assert_same_output(Brightness().score(small), remote.score(small))
    assert stats(server, "brightness")["requests"] - before == 3


def test_unserializable_metadata_is_a_per_sample_error(server):
    samples = [Sample("a", "p", noise(8, 8, 0), metadata={"want": True}),
               Sample("b", "p", noise(8, 8, 1), metadata={"want": True, "obj": object()})]
    out = RemoteReward(server.url, "multi").score(samples)
    assert out.applicable == [True, False] and "'b'" in out.errors[1] and "object" in out.errors[1]
    assert out.components["brightness"].errors[1] == out.errors[1]
    assert out.scores[0] == make_multi().score(samples[:1]).scores[0]


def test_client_errors_name_the_problem(server):
    with pytest.raises(UnknownNameError, match="no reward named 'nope'"):
        RemoteReward(server.url, "nope").load()
    with pytest.raises(ConfigError):
        RemoteReward("ftp://127.0.0.1:1", "brightness")
    closed = RewardServer({"b": Brightness()}, port=0)
    url = closed.url
    closed.close()
    with pytest.raises(RemoteRewardError, match="cannot reach"):
        RemoteReward(url, "b").score([Sample("a", "p", noise(8, 8, 0))])



# -- wire codec ----------------------------------------------------------------------------------------
def test_wire_codec_round_trips_exactly():
    values = {
        "floats": [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, math.pi],
        "special": (math.nan, math.inf, -math.inf), "bytes": b"\x00\xff", "int_keys": {1: [2], (3, "x"): {}},
        "tag_like": {"$tuple": 1}, "np": np.float32(0.25), "arr": np.arange(3), "text": "\udc80é",
    }
    back = loads(dumps(to_wire(values)))
    for a, b in zip(values["floats"], back["floats"]):
        assert np.float64(a).tobytes() == np.float64(b).tobytes()
    assert math.isnan(back["special"][0]) and back["special"][1:] == (math.inf, -math.inf)
    assert back["bytes"] == b"\x00\xff" and back["int_keys"] == {1: [2], (3, "x"): {}}
    assert back["tag_like"] == {"$tuple": 1} and back["np"] == 0.25 and back["arr"] == [0, 1, 2]
    assert back["text"] == "\udc80é"
    assert b"NaN" not in dumps(to_wire(values))  # standard JSON only
    with pytest.raises(TypeError):
        to_wire(object())
    assert to_wire(object(), strict=False).startswith("<object")


def test_image_failure_placeholder_raises_the_recorded_error():
    sample = replace(Sample("x", "p"), image=ImageFailure("sample 'x': it broke"))
    assert Brightness().score([sample]).errors == ["sample 'x': it broke"]


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (13, 1), (37, 23)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_client_png_writer_is_lossless(size, level):
    from evalsuite.remote import encode_png

    img = noise(*size, seed=size[0] * 100 + size[1])
    back = Image.open(io.BytesIO(encode_png(img, level)))
    assert back.mode == "RGB" and back.size == img.size
    assert np.array_equal(np.asarray(back), np.asarray(img))
    with pytest.raises(ValueError):
        encode_png(img.convert("L"))


# -- timeouts and limits, on raw sockets -----------------------------------------------------------------
def send_raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)  # every wait below ends by then
    sock.sendall(data)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict, dict]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, json.loads(resp.read()), dict(resp.getheaders())


def post_head(length: int, path: str = "/score/brightness") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_truncated_body_gets_408_after_the_read_timeout():
    with RewardServer({"brightness": Brightness()}, port=0, read_timeout_s=0.5) as srv:
        start = time.monotonic()
        with send_raw(srv.port, post_head(1000) + b'{"samples": [') as sock:
            assert request(srv, "GET", "/health")[0] == 200  # the stalled client holds up nobody
            status, reply, headers = read_reply(sock)
            elapsed = time.monotonic() - start
            assert status == 408 and "13 of 1000 bytes" in reply["error"]
            assert "read_timeout_s" in reply["error"]
            assert elapsed >= 0.5 and elapsed < 8  # the short timeout, not the old minute
            assert headers.get("connection") == "close" and sock.recv(1) == b""
        assert request(srv, "POST", "/score/brightness", b'{"samples": []}')[0] == 200


def test_oversized_content_length_is_413_at_once_without_reading_the_body(server):
    # 200 MB announced, nothing sent: the answer must not wait for a body that never comes
    with send_raw(server.port, post_head(200_000_000)) as sock:
        status, reply, _ = read_reply(sock)
        assert status == 413 and "200000000 bytes" in reply["error"] and "max_body_bytes" in reply["error"]
    # past what the server would read and drop for the client's sake: answered, then hung up
    with send_raw(server.port, post_head(5 * 1024**3)) as sock:
        status, reply, headers = read_reply(sock)
        assert status == 413 and headers.get("connection") == "close" and sock.recv(1) == b""
    assert request(server, "GET", "/health")[0] == 200


def test_a_silent_connection_is_closed_after_the_read_timeout():
    with RewardServer({"brightness": Brightness()}, port=0, read_timeout_s=0.5) as srv:
        for opening in (b"", b"GET /hea"):  # nothing at all; half a request line
            with send_raw(srv.port, opening) as sock:
                assert sock.recv(1024) == b""  # the server hung up (the client would wait 10 s)
        assert srv.health()["read_timeout_s"] == 0.5 and request(srv, "GET", "/health")[0] == 200


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` with no pixel data: a bomb's first bytes."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_image_over_the_pixel_limit_is_one_bad_sample(server):
    bomb, good = png_declaring(20000, 20000), encoded(noise(12, 12, 3))
    samples = [wire_sample("good", b64(good)), wire_sample("bomb", b64(bomb)), wire_sample("also", b64(good))]
    status, reply = request(server, "POST", "/score/brightness", json.dumps({"samples": samples}).encode())
    assert status == 200 and reply["errors"][0] is None and reply["errors"][2] is None
    assert reply["errors"][1] == f"sample 'bomb': image 20000x20000 exceeds {MAX_PIXELS} pixels"
    # through the client, whose own decoding meets the bomb first
    batch = [Sample("a", "p", noise(8, 8, 0)), Sample("bomb", "p", bomb), Sample("c", "p", noise(8, 8, 1))]
    out = RemoteReward(server.url, "brightness").score(batch)
    assert out.applicable == [True, False, True] and "'bomb'" in out.errors[1] and "pixels" in out.errors[1]
    local = Brightness().score([batch[0], batch[2]])
    assert [out.scores[0], out.scores[2]] == local.scores


def test_client_keeps_one_connection_alive_and_replaces_a_dropped_one(monkeypatch):
    connects: list[int] = []
    connect = http.client.HTTPConnection.connect

    def counting(self) -> None:
        connects.append(1)
        connect(self)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", counting)
    samples = [Sample("a", "p", noise(8, 8, 0))]
    with RewardServer({"brightness": Brightness()}, port=0, read_timeout_s=1.5) as srv:
        remote = RemoteReward(srv.url, "brightness")
        for _ in range(3):
            assert_same_output(Brightness().score(samples), remote.score(samples))
        assert len(connects) == 1  # load() and three requests over one keep-alive connection
        time.sleep(2.5)  # idle past read_timeout_s: the server closes it
        assert_same_output(Brightness().score(samples), remote.score(samples))
        assert len(connects) == 2


def test_client_sample_json_is_standard_json():
    remote = RemoteReward("http://127.0.0.1:1", "never-contacted")
    image = noise(9, 7, 5)
    sample = Sample("a", "p", image, metadata={"k": [1, 2.5]}, source_image=b"broken", seed=3, group="g")
    body = remote._encode(sample, remote._encode_images([sample]))
    back = json.loads(body)
    assert set(back) == set(SAMPLE_FIELDS) and back["seed"] == 3 and back["group"] == "g"
    assert np.array_equal(np.asarray(decode_image(back["image"], "image", "a")), np.asarray(image))
    assert "'a'" in back["source_image"]["error"] and back["metadata"] == {"k": [1, 2.5]}
