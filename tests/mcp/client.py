"""The official Python MCP SDK (PyPI `mcp`) against a real `warden serve`.

Run by tests/mcp/run.sh, which starts the lab and the server and passes, as JSON on argv[1]:
base URL, the EDR responder's and the phishing triage agent's JWT-SVIDs, an analyst's and the
admin's API tokens. Every check raises on failure; the script prints one line per scenario.
"""

import asyncio
import contextlib
import json
import sys
import urllib.error
import urllib.request

from typing import Any, Literal

from mcp import ClientSession
from mcp.client.extension import ResultClaim
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import Request, RequestParams, Result
from pydantic import TypeAdapter

CFG = json.loads(sys.argv[1])
BASE = CFG["base"]


def http(method, path, token, body=None):
    """A call to the /v1 API (the human side)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data, method=method,
                                 headers={"authorization": "Bearer " + token, "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def isolate(target, confidence, task="INC-7"):
    return {"task": task, "target": target, "confidence": confidence, "reason": "beacon",
            "rationale": "C2 beacon seen", "evidence": [{"kind": "edr", "ref": "det:1"}]}


def text(result):
    return " ".join(getattr(c, "text", "") for c in result.content)


def meta(result):
    return result.meta or {}


class Session:
    """An MCP session as `token`'s agent (the SDK's own context managers, in one task)."""

    def __init__(self, token, modern=False, **session_args):
        self.token = token
        self.modern = modern  # 2026-07-28 (server/discover) rather than the 2025-11-25 handshake
        self.session_args = session_args
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self):
        client = await self.stack.enter_async_context(
            create_mcp_http_client(headers={"Authorization": "Bearer " + self.token}))
        read, write = await self.stack.enter_async_context(streamable_http_client(BASE + "/mcp", http_client=client))
        session = await self.stack.enter_async_context(ClientSession(read, write, **self.session_args))
        await (session.discover() if self.modern else session.initialize())
        return session

    async def __aexit__(self, *exc):
        return await self.stack.__aexit__(*exc)


async def first_pending_approval():
    for _ in range(200):
        status, items = http("GET", "/v1/approvals", CFG["analyst"])
        assert status == 200, items
        if items:
            return items[0]["id"]
        await asyncio.sleep(0.05)
    raise AssertionError("no approval appeared")


async def initialize_and_list():
    async with Session(CFG["edr"]) as s:
        edr = [t.name for t in (await s.list_tools()).tools]
    async with Session(CFG["phish"]) as s:
        phish = [t.name for t in (await s.list_tools()).tools]
        init = s
    assert edr[:2] == ["warden.open_task", "warden.get_action"], edr
    assert edr[2:6] == ["file.quarantine", "host.isolate", "host.release", "process.kill"], edr
    # Then the upstream tools mcp.toml maps (the lab EDR's MCP server); unmapped ones hidden.
    assert edr[6:] == ["lab-edr.isolate_host", "lab-edr.release_host", "lab-edr.kill_process"], edr
    assert "email.quarantine" in phish and "process.kill" not in phish, phish
    print(f"ok   initialize; tools per agent: edr {len(edr)}, phish {len(phish)}")


async def execute_deny_advise():
    async with Session(CFG["edr"]) as s:
        r = await s.call_tool("host.isolate", isolate("host:web-42", 0.95))
        assert not r.is_error and meta(r)["warden/decision"]["outcome"] == "execute", text(r)
        assert r.structured_content["state"] == "succeeded", r.structured_content
        r = await s.call_tool("host.isolate", isolate("host:web-43", 0.1))
        assert not r.is_error and meta(r)["warden/state"] == "advised", text(r)
        status, _ = http("POST", "/v1/halt", CFG["admin"], {"scope": "action", "id": "host.isolate", "reason": "drill"})
        assert status == 200
        r = await s.call_tool("host.isolate", isolate("host:web-44", 0.95))
        assert r.is_error and "halted" in text(r), text(r)
        status, _ = http("POST", "/v1/resume", CFG["admin"], {"scope": "action", "id": "host.isolate", "reason": "drill over"})
        assert status == 200
        refused = None
        try:
            bad = await s.call_tool("host.isolate", {"task": "INC-7", "target": "host:web-42", "confidence": 2})
            refused = bad.is_error  # an SDK may turn the JSON-RPC error into an error result
        except Exception as e:  # the invalid-params error
            refused = "-32602" in str(e) or "confidence" in str(e) or "Invalid" in str(e) or "invalid" in str(e)
        assert refused, "a confidence of 2 is refused as invalid params"
    print("ok   execute, advise, deny after a halt, bad arguments")


async def held_then_approved():
    progress = []

    async def on_progress(p, total, message):
        progress.append((p, total, message))

    async with Session(CFG["edr"]) as s:
        call = asyncio.create_task(
            s.call_tool("host.isolate", isolate("host:db-payments-01", 0.95), progress_callback=on_progress))
        approval = await first_pending_approval()
        await asyncio.sleep(1.2)
        status, body = http("POST", f"/v1/approvals/{approval}/approve", CFG["analyst"], {})
        assert status == 200, body
        r = await call
        assert not r.is_error and r.structured_content["state"] == "succeeded", text(r)
        assert progress, "progress notifications while held"
    print(f"ok   held for a human, approved over HTTP, executed ({len(progress)} progress notifications)")


async def held_then_rejected():
    async with Session(CFG["edr"]) as s:
        call = asyncio.create_task(s.call_tool("host.isolate", isolate("host:lt-cfo", 0.95)))
        approval = await first_pending_approval()
        status, body = http("POST", f"/v1/approvals/{approval}/reject", CFG["analyst"], {"reason": "call the DBA first"})
        assert status == 200, body
        r = await call
        assert r.is_error and "call the DBA first" in text(r), text(r)
    print("ok   rejected: an error result naming who and why")


async def held_then_expired():
    # The identity responder's approvals expire in 2 s here (run.sh); the hold budget is 4 s.
    async with Session(CFG["identity"]) as s:
        args = {"task": "INC-7", "target": "account:jdoe", "confidence": 0.9, "reason": "impossible travel",
                "rationale": "sign-ins from two continents",
                "evidence": [{"kind": "idp", "ref": "risk:1"}, {"kind": "siem", "ref": "alrt:2"}]}
        r = await s.call_tool("account.disable", args)
        assert r.is_error and "nobody approved" in text(r), text(r)
        assert meta(r)["warden/state"] == "expired", meta(r)
    print("ok   expired: an error result saying nobody approved in time; nothing ran")


async def budget_then_retry():
    # The server runs with --mcp-hold 4s: the first call answers with the pending ids.
    async with Session(CFG["edr"]) as s:
        args = isolate("host:db-payments-01", 0.95, task="INC-8")
        first = await s.call_tool("host.isolate", args)
        assert not first.is_error and meta(first)["warden/state"] == "pending_approval", text(first)
        request, approval = meta(first)["warden/request"], meta(first)["warden/approval"]
    status, body = http("POST", f"/v1/approvals/{approval}/approve", CFG["analyst"], {})
    assert status == 200, body
    # A new session (a reconnect) with the same arguments collects the one execution.
    async with Session(CFG["edr"]) as s:
        again = await s.call_tool("host.isolate", isolate("host:db-payments-01", 0.93, task="INC-8"))
        assert meta(again)["warden/request"] == request, (meta(again), request)
        assert meta(again)["warden/state"] == "succeeded", text(again)
    status, items = http("GET", "/v1/actions?task=INC-8&limit=1000", CFG["admin"])
    same = [a for a in items if a["target"] == "host:db-payments-01"]
    assert len(same) == 1, same
    print("ok   hold budget passed, approved, the retry attached and collected one execution")


TASKS = "io.modelcontextprotocol/tasks"


class CreatedTask(Result):
    """`resultType: "task"` (the MCP tasks extension, SEP-2663): the call became a task."""
    result_type: Literal["task"]
    task_id: str
    status: str
    status_message: str | None = None
    poll_interval_ms: int | None = None


class TaskParams(RequestParams):
    task_id: str


class GetTask(Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param = "taskId"


class CancelTask(Request[TaskParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    name_param = "taskId"


async def unresolved(task, ctx):  # this client polls by hand (allow_claimed=True)
    raise AssertionError("not resolved here")


async def task_augmented():
    """A client declaring the tasks extension gets a task at once; tasks/get follows the approval."""
    claim = ResultClaim(result_type="task", model=CreatedTask, resolve=unresolved)
    raw = TypeAdapter(dict[str, Any])
    # Extensions' result shapes are a 2026-07-28 feature: the SDK declares them only there.
    async with Session(CFG["edr"], modern=True, extensions={TASKS: {}}, result_claims={TASKS: [claim]}) as s:
        args = isolate("host:db-payments-01", 0.95, task="INC-9")
        created = await s.call_tool("host.isolate", args, allow_claimed=True)
        assert isinstance(created, CreatedTask) and created.status == "working", created
        task_id, approval = created.task_id, (created.meta or {})["warden/approval"]
        got = await s.send_request(GetTask(params=TaskParams(task_id=task_id)), raw)
        assert got["status"] == "working" and approval in got["statusMessage"], got
        again = await s.call_tool("host.isolate", args, allow_claimed=True)
        assert isinstance(again, CreatedTask) and again.task_id == task_id, again
        try:
            await s.send_request(CancelTask(params=TaskParams(task_id=task_id)), raw)
            raise AssertionError("an agent cancelled its own request")
        except Exception as e:
            assert "not_cancellable" in str(e) or "cannot be cancelled" in str(e), e
        status, body = http("POST", f"/v1/approvals/{approval}/approve", CFG["analyst"], {})
        assert status == 200, body
        for _ in range(200):
            got = await s.send_request(GetTask(params=TaskParams(task_id=task_id)), raw)
            if got["status"] != "working":
                break
            await asyncio.sleep(0.05)
        assert got["status"] == "completed", got
        assert got["result"]["structuredContent"]["state"] == "succeeded", got
    status, items = http("GET", "/v1/actions?task=INC-9&limit=1000", CFG["admin"])
    assert len(items) == 1 and items[0]["state"] == "succeeded", items
    print("ok   task-augmented call: a task at once, tasks/get followed the approval to one execution")


def lab_calls(endpoint):
    with urllib.request.urlopen(CFG["lab"] + "/state", timeout=5) as r:
        return json.loads(r.read())["calls"]["by_endpoint"].get(endpoint, 0)


async def upstream_proxied():
    """A mapped tool of an upstream MCP server, governed and run through the upstream."""
    async with Session(CFG["edr"]) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert "lab-edr.run_script" not in tools and "lab-edr.get_host" not in tools, list(tools)
        schema = tools["lab-edr.isolate_host"].input_schema
        assert set(schema["properties"]) == {"hostname", "comment", "task", "confidence", "rationale", "evidence", "inputs"}, schema
        before = lab_calls("edr mcp.isolate_host")
        args = {"hostname": "build-07", "comment": "beacon", "task": "INC-7", "confidence": 0.95,
                "rationale": "C2 beacon seen", "evidence": [{"kind": "edr", "ref": "det:9"}]}
        r = await s.call_tool("lab-edr.isolate_host", args)
        assert not r.is_error and r.structured_content["state"] == "succeeded", text(r)
        assert lab_calls("edr mcp.isolate_host") == before + 1
        status, action = http("GET", "/v1/actions/" + meta(r)["warden/request"], CFG["admin"])
        assert (action["action"], action["target"], action["via"]) == ("host.isolate", "host:build-07", "lab-edr/isolate_host"), action
        # On a critical host it waits for a human, like the catalog's own tool.
        held = await s.call_tool("lab-edr.isolate_host", dict(args, hostname="db-payments-01", task="INC-8"))
        assert meta(held)["warden/state"] == "pending_approval", text(held)
        assert lab_calls("edr mcp.isolate_host") == before + 1, "nothing ran before the approval"
        status, body = http("POST", f"/v1/approvals/{meta(held)['warden/approval']}/reject", CFG["analyst"],
                            {"reason": "not this one"})
        assert status == 200, body
    print("ok   an upstream MCP server's mapped tool: decided as host.isolate, run through the upstream")


async def refused_without_a_valid_token():
    req = urllib.request.Request(BASE + "/mcp", b"{}", method="POST", headers={"content-type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("answered without a token")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code
        challenge = e.headers["www-authenticate"]
        assert "resource_metadata=" in challenge and "/.well-known/oauth-protected-resource" in challenge, challenge
    with urllib.request.urlopen(BASE + "/.well-known/oauth-protected-resource", timeout=5) as r:
        metadata = json.loads(r.read())
    assert metadata["resource"] == BASE + "/mcp", metadata
    refused = False
    try:
        async with Session("not-a-token") as s:
            await s.list_tools()
    except BaseException:  # the SDK raises its own error (or a group of them) for the 401
        refused = True
    assert refused, "a session with a bad token"
    print("ok   missing or bad token: 401 with the metadata pointer")


async def stdio_bridge():
    """`warden mcp stdio`, launched by the SDK's stdio client, is the same MCP server."""
    params = StdioServerParameters(command=CFG["warden"], args=["mcp", "stdio", "--server", BASE],
                                   env={"WARDEN_AGENT_TOKEN": CFG["edr"]})
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            names = [t.name for t in (await s.list_tools()).tools]
            assert names[2:6] == ["file.quarantine", "host.isolate", "host.release", "process.kill"], names
            r = await s.call_tool("host.isolate", isolate("host:web-01", 0.95))
            assert not r.is_error and r.structured_content["state"] == "succeeded", text(r)
            bad = False
            try:
                r = await s.call_tool("host.isolate", {"task": "INC-7", "target": "web-01", "confidence": 0.9})
                bad = r.is_error
            except Exception:
                bad = True
            assert bad, "invalid params pass through the bridge"
    print("ok   the stdio bridge (warden mcp stdio) launched by the SDK's stdio client")


# Each scenario in its own event loop: a session the SDK fails to open (the bad token) leaves
# a generator to be finalized, which must not cancel the next scenario's scopes.
for scenario in [initialize_and_list, execute_deny_advise, held_then_approved, held_then_rejected,
                 held_then_expired, budget_then_retry, task_augmented, upstream_proxied, stdio_bridge, refused_without_a_valid_token]:
    asyncio.run(scenario())
