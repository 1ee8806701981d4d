"""Pairwise judges: answer parsing by hand, the OpenAI-compatible judge against a fake server on loopback
(valid, fenced, malformed, HTTP errors, timeouts, retries), and the local Qwen2.5-VL judge against an
independent transformers computation on tiny weights."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from evalsuite.errors import ConfigError
from evalsuite.rewards.judge_local import LocalQwenJudge
from evalsuite.rewards.judge_protocol import JUDGE_PROMPT, LABEL_PROMPT_SUFFIX, AnswerParseError, parse_answer
from evalsuite.rewards.judges import API_KEY_ENV, OpenAIJudge, make_judge


# -- a fake OpenAI-compatible server on 127.0.0.1 -------------------------------------------------
def completion(content) -> tuple[int, bytes, dict]:
    message = {"role": "assistant", "content": content}
    body = {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
    return 200, json.dumps(body).encode(), {}


def verdict(pref: str, reasoning: str = "because") -> tuple[int, bytes, dict]:
    return completion(json.dumps({"reasoning": reasoning, "preference": pref}))


def status(code: int, body: str = "boom", headers: dict | None = None) -> tuple[int, bytes, dict]:
    return code, body.encode(), headers or {}


def decode_images(body: dict) -> list[Image.Image]:
    """The images of a chat request, in the order shown to the judge."""
    out = []
    for part in body["messages"][0]["content"]:
        if part["type"] == "image_url":
            url = part["image_url"]["url"]
            assert url.startswith("data:image/png;base64,")
            out.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
    return out


class FakeChatServer:
    """Answers POST /v1/chat/completions from a script (one action per request), then ``fallback``.

    An action is ``(status, body bytes, headers)`` or a callable of the request body returning one.
    Every request's headers and JSON body are recorded.
    """

    def __init__(self, fallback: Callable[[dict], tuple] | None = None) -> None:
        self.script: list = []
        self.fallback = fallback or (lambda body: verdict("image_a"))
        self.requests: list[tuple[dict, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((dict(self.headers), body))
                    action = server.script.pop(0) if server.script else server.fallback
                    path_ok = self.path == "/v1/chat/completions"
                if callable(action):
                    action = action(body)
                code, data, headers = action if path_ok else status(404, "no such path")
                try:
                    self.send_response(code)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> FakeChatServer:
        with self.lock:
            self.script, self.requests = [], []
            self.fallback = lambda body: verdict("image_a")
        return self


@pytest.fixture(scope="module")
def _server():
    s = FakeChatServer()
    yield s
    s.close()  # shutdown() polls every 0.5 s: one server per module, reset per test


@pytest.fixture
def server(_server):
    return _server.reset()


@pytest.fixture
def images():
    a = Image.new("RGB", (24, 16), (220, 20, 20))
    a.putpixel((3, 4), (1, 2, 3))
    b = Image.new("RGB", (16, 24), (20, 20, 220))
    return a, b


def fast_judge(url: str, **kw) -> OpenAIJudge:
    kw = {"model": "judge-test", "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **kw}
    return OpenAIJudge(url, **kw)


# -- parsing (pure, hand-written cases) ----------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ('{"reasoning": "A shows the dog", "preference": "image_a"}', ("image_a", "A shows the dog")),
    ('```json\n{"reasoning": "B has the red car", "preference": "image_b"}\n```',
     ("image_b", "B has the red car")),
    ('```\n{"reasoning": "x", "preference": "tie"}\n```', ("tie", "x")),
    ('Here is my verdict:\n{"reasoning": "both fine", "preference": "tie"}\nHope it helps.',
     ("tie", "both fine")),
    ('{"reasoning": "r", "preference": "Image B"}', ("image_b", "r")),
    ('{"reasoning": "r", "preference": " image-a "}', ("image_a", "r")),
    # unescaped quotes inside the reasoning make it invalid JSON: the loose pattern still finds the label
    ('{"reasoning": "the sign reads "OPEN" in A", "preference": "image_a"}',
     ("image_a", 'the sign reads "OPEN" in A')),
    # the model echoes the format placeholder, then answers
    ('Format: {"reasoning": "...", "preference": "<image_a | image_b | tie>"}\n'
     'Answer: {"reasoning": "ok", "preference": "image_b"}', ("image_b", "ok")),
    ('{"reasoning": {"a": 1}, "preference": "tie"}', ("tie", '{"a": 1}')),
])
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("   ", "empty"),
    ("I prefer the first image.", "no JSON"),
    ('{"reasoning": "x"}', "no JSON"),
    ('{"reasoning": "x", "preference": "image_c"}', "must be one of"),
    ('{"reasoning": "x", "preference": null}', "must be one of"),
    ('{"preference": "image_a"} and then {"preference": "image_b"}', "conflicting"),
])
def test_parse_answer_rejects(text, message):
    with pytest.raises(AnswerParseError, match=message):
        parse_answer(text)


# -- HTTP judge --------------------------------------------------------------------------------------
def test_valid_answer_and_request_format(server, images):
    a, b = images
    server.script = [verdict("image_b", "B matches")]
    j = fast_judge(server.url, api_key="test-key").judge("a red square", a, b)
    assert (j.preference, j.reasoning, j.attempts, j.error, j.ok) == ("image_b", "B matches", 1, None, True)
    headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer test-key"
    assert body["model"] == "judge-test" and body["temperature"] == 0.3 and "max_tokens" not in body
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "text", "image_url", "text", "image_url"]
    assert parts[0]["text"] == JUDGE_PROMPT.format(caption="a red square")
    assert "a red square" in parts[0]["text"]
    assert parts[1]["text"] == "Image A:" and parts[3]["text"] == "Image B:"
    got_a, got_b = decode_images(body)  # lossless, in the order given
    assert list(got_a.getdata()) == list(a.getdata()) and list(got_b.getdata()) == list(b.getdata())


def test_no_key_sends_no_authorization(server, images, monkeypatch):
    for var in API_KEY_ENV:
        monkeypatch.delenv(var, raising=False)
    assert fast_judge(server.url).judge("c", *images).ok
    assert "Authorization" not in server.requests[0][0]
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert fast_judge(server.url).judge("c", *images).ok
    assert server.requests[1][0]["Authorization"] == "Bearer from-env"
    assert "from-env" not in json.dumps(fast_judge(server.url).describe())


def test_code_fenced_and_content_parts(server, images):
    server.script = [
        completion('```json\n{"reasoning": "fenced", "preference": "tie"}\n```'),
        completion([{"type": "text", "text": '{"reasoning": "parts", '},
                    {"type": "text", "text": '"preference": "image_a"}'}]),
    ]
    judge = fast_judge(server.url)
    assert (judge.judge("c", *images).preference, judge.judge("c", *images).preference) == ("tie", "image_a")


def test_malformed_answer_is_retried(server, images):
    server.script = [completion('{"reasoning": "cut off", "prefer'), completion("no idea"),
                     verdict("image_b")]
    j = fast_judge(server.url, max_retries=2).judge("c", *images)
    assert j.preference == "image_b" and j.attempts == 3 and len(server.requests) == 3
    assert all("AnswerParseError" in e for e in j.errors) and len(j.errors) == 2


def test_http_500_then_success(server, images):
    server.script = [status(500, "overloaded"), status(503, "again"), verdict("image_a")]
    j = fast_judge(server.url).judge("c", *images)
    assert j.preference == "image_a" and j.attempts == 3
    assert "HTTP 500" in j.errors[0] and "overloaded" in j.errors[0] and "HTTP 503" in j.errors[1]


def test_not_a_completion_is_retried(server, images):
    server.script = [status(200, "<html>proxy error</html>"), status(200, '{"choices": []}'), verdict("tie")]
    j = fast_judge(server.url).judge("c", *images)
    assert j.preference == "tie" and j.attempts == 3 and "not a chat completion" in j.errors[0]


def test_always_failing_is_failed_not_tie(server, images):
    server.fallback = lambda body: status(500, "down")
    started = time.monotonic()
    j = fast_judge(server.url, max_retries=3).judge("c", *images)
    assert j.preference is None and not j.ok and j.preference != "tie"
    assert j.attempts == 4 and len(server.requests) == 4 and len(j.errors) == 4
    assert "HTTP 500" in j.error and time.monotonic() - started < 3  # backoff 0.01·(1+2+4)


def test_always_malformed_is_failed_with_raw_kept(server, images):
    server.fallback = lambda body: completion("I cannot decide.")
    j = fast_judge(server.url, max_retries=1).judge("c", *images)
    assert j.preference is None and j.attempts == 2 and j.raw == "I cannot decide."


def test_client_errors_are_not_retried(server, images):
    server.script = [status(401, "bad key")]
    j = fast_judge(server.url).judge("c", *images)
    assert not j.ok and j.attempts == 1 and len(server.requests) == 1 and "HTTP 401" in j.error


def test_retry_after_is_honoured_up_to_the_cap(server, images):
    server.script = [status(429, "slow down", {"Retry-After": "0.3"}), verdict("tie")]
    started = time.monotonic()
    j = fast_judge(server.url).judge("c", *images)
    assert j.ok and j.attempts == 2 and time.monotonic() - started >= 0.3


def test_timeouts_are_bounded(server, images):
    """The server answers only once the judge has given up, so a judge without a working timeout would
    wait for that answer and record a verdict: no wall-clock bound needed."""
    release = threading.Event()

    def hold(_body):
        release.wait(30)
        return verdict("tie")

    server.fallback = hold
    try:
        j = fast_judge(server.url, timeout=0.3, max_retries=1).judge("c", *images)
    finally:
        release.set()
    assert not j.ok and j.attempts == 2 and "timed out" in j.error.lower()


def test_unreachable_server_fails(images):
    import socket

    with socket.socket() as s:  # a free loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    j = fast_judge(f"http://127.0.0.1:{port}/v1", max_retries=1).judge("c", *images)
    assert not j.ok and j.attempts == 2 and "request failed" in j.error


def test_config_and_make_judge(server):
    with pytest.raises(ConfigError):
        OpenAIJudge("ftp://127.0.0.1/v1", "m")
    with pytest.raises(ConfigError):
        OpenAIJudge(server.url, "m", image_format="gif")
    with pytest.raises(ConfigError):
        make_judge("gemini")
    j = make_judge(server.url, model="m", temperature=0.0)
    assert isinstance(j, OpenAIJudge) and j.url == server.url + "/chat/completions" and j.temperature == 0.0
    assert make_judge(server.url + "/chat/completions/", model="m").url == server.url + "/chat/completions"
    assert make_judge(server.url).describe()["model"] == "gemini-2.0-flash"
    local = make_judge("local", model="some/path", mode="score")
    assert isinstance(local, LocalQwenJudge) and local.describe()["mode"] == "score"
    with pytest.raises(ConfigError):
        LocalQwenJudge(mode="beam")


def test_jpeg_option_matches_official_encoding(server, images):
    fast_judge(server.url, image_format="jpeg").judge("c", *images)
    url = server.requests[0][1]["messages"][0]["content"][2]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")


# -- local Qwen2.5-VL judge: parity with an independent transformers computation ----------------------
@pytest.fixture(scope="module")
def qwen(tiny_dir):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    path = str(tiny_dir / "qwen2.5-vl")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return path, model, AutoProcessor.from_pretrained(path)


def _reference_inputs(processor, caption, a, b, suffix=""):
    from qwen_vl_utils import fetch_image

    turn = [{"role": "user", "content": [
        {"type": "text", "text": JUDGE_PROMPT.format(caption=caption) + suffix},
        {"type": "text", "text": "Image A:"}, {"type": "image"},
        {"type": "text", "text": "Image B:"}, {"type": "image"},
    ]}]
    text = processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    fitted = [fetch_image({"image": im}) for im in (a, b)]
    return text, fitted


def test_local_judge_score_mode_matches_reference(qwen, images):
    path, model, processor = qwen
    a, b = images
    judge = LocalQwenJudge(path, mode="score", dtype="float32")
    j = judge.judge("a red square next to a blue one", a, b)
    text, fitted = _reference_inputs(processor, "a red square next to a blue one", a, b, LABEL_PROMPT_SUFFIX)
    ref = {}
    for label in ("image_a", "image_b", "tie"):  # one unbatched forward per candidate answer
        enc = processor(text=[text + label + "<|im_end|>"], images=fitted, return_tensors="pt")
        n = len(processor(text=[text], images=fitted, return_tensors="pt")["input_ids"][0])
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0].float(), -1)
        ids = enc["input_ids"][0]
        ref[label] = sum(float(logp[t - 1, ids[t]]) for t in range(n, len(ids)))
    assert j.ok and j.attempts == 1
    for label, value in ref.items():
        assert j.details["label_logprobs"][label] == pytest.approx(value, abs=1e-3)
    assert j.preference == max(ref, key=ref.get)


def test_local_judge_generate_mode_matches_reference(qwen, images):
    path, model, processor = qwen
    a, b = images
    judge = LocalQwenJudge(path, mode="generate", dtype="float32", max_new_tokens=12)
    j = judge.judge("a red square", a, b)
    text, fitted = _reference_inputs(processor, "a red square", a, b)
    enc = processor(text=[text], images=fitted, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=12, repetition_penalty=1.05,
                             temperature=None, top_p=None, top_k=None)
    raw = processor.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert j.raw == raw and j.details["new_tokens"] == out.shape[1] - enc["input_ids"].shape[1]
    try:
        expected = parse_answer(raw)[0]
    except AnswerParseError:
        expected = None
    # random tiny weights do not write JSON: the verdict must then be failed (never a tie)
    assert j.preference == expected
    if expected is None:
        assert not j.ok and "AnswerParseError" in j.error
