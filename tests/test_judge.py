"""The LLM judge against a real HTTP server on loopback speaking the chat-completions API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from opgrpo_lib.config import JudgeCfg
from opgrpo_lib.judge import ASPECTS, Judge, parse_judgement

GOOD = {a: {"reason": f"{a} ok", "score": str(i % 5 + 1)} for i, a in enumerate(ASPECTS)}


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list = []
    plan: list = []  # per request: "ok" | "bad_json" | "error"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        kind = FakeOpenAI.plan.pop(0) if FakeOpenAI.plan else "ok"
        if kind == "error":
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "boom"}}')
            return
        content = "not json at all" if kind == "bad_json" else json.dumps(GOOD)
        resp = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100},
        }  # fmt: skip
        data = json.dumps(resp).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def server(monkeypatch):
    FakeOpenAI.requests, FakeOpenAI.plan = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test-secret")
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def settings(url, **kw):
    return JudgeCfg(enabled=True, base_url=url, api_key_env="JUDGE_TEST_KEY", max_retries=2, **kw)


def test_judge_scores_caches_and_counts(server, tmp_path):
    FakeOpenAI.plan = ["ok", "bad_json", "error", "ok"]  # row 3 fails once, then succeeds on retry
    judge = Judge(settings(server, model="judge-x"), tmp_path / "cache")
    res = judge.judge(["q1", "q2", "q3"], ["o1", "o2", None])
    assert res.requested == 3 and res.malformed == 1 and res.failed == 0
    s = res.summary()
    assert s["parsed"] == 2 and s["helpfulness"] == 1 and s["engagement"] == 5 and s["overall"] == 3.0
    req = FakeOpenAI.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "judge-x"
    assert req["auth"] == "Bearer sk-test-secret" and "## Query:\nq1" in req["body"]["messages"][1]["content"]
    n = len(FakeOpenAI.requests)
    again = Judge(settings(server, model="judge-x"), tmp_path / "cache").judge(["q1", "q2", "q3"], ["o1", "o2", None])
    assert len(FakeOpenAI.requests) == n and again.cached == 3 and again.requested == 0
    assert "sk-test-secret" not in "".join(p.read_text() for p in (tmp_path / "cache").iterdir())


def test_row_and_cost_caps(server, tmp_path):
    judge = Judge(settings(server, max_rows=2), tmp_path / "c1")
    assert len(judge.judge(["a", "b", "c"], ["x", "y", "z"]).scores) == 2
    capped = Judge(settings(server, max_cost_usd=0.0025), tmp_path / "c2").judge(["a", "b", "c"], ["x", "y", "z"])
    assert capped.requested == 1 and capped.stopped_by_cost_cap  # one request costs 0.0028 USD


def test_persistent_failure_is_counted(server, tmp_path):
    FakeOpenAI.plan = ["error"] * 10
    res = Judge(settings(server), tmp_path / "c").judge(["a"], ["x"])
    assert res.failed == 1 and res.summary()["parsed"] == 0


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(RuntimeError, match="NO_SUCH_KEY"):
        Judge(JudgeCfg(api_key_env="NO_SUCH_KEY"), tmp_path).judge(["a"], ["b"])


def test_parse_judgement():
    assert parse_judgement("```json\n" + json.dumps(GOOD) + "\n```")["clarity"] == 2
    assert parse_judgement('{"helpfulness": {"score": 9}}') is None
    assert parse_judgement("") is None
