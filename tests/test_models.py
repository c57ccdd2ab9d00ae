"""Model through litellm's real HTTP client against the scripted server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from scripted_server import Reply, ScriptedServer, error, text, tool_calls

from agent_kernel import _aio
from agent_kernel.memory import Usage
from agent_kernel.models import (
    RAW_ARGUMENTS,
    MissingCredentials,
    Model,
    ModelError,
    ModelNotFound,
    ModelRefused,
    ModelReply,
    ModelTimeout,
    as_model,
    cut_at_stop,
    parse_arguments,
)

USER = [{"role": "user", "content": "hi"}]
TOOLS = [
    {"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "search", "description": "Search.", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}},
]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail any connection off this machine, so no test can reach a real provider."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]  # type: ignore[index]
            if not ipaddress.ip_address(socket.gethostbyname(host) if host == "localhost" else host).is_loopback:
                raise AssertionError(f"test tried to connect to {address}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.fixture
def model(scripted_server: ScriptedServer) -> Model:
    return scripted_server.model(retry_delay=0.01)


def test_plain_reply_carries_content_usage_and_request(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([text("Hello, notebook.", usage=(11, 7))])
    reply = model.generate([{"role": "system", "content": "be brief"}, *USER])
    assert reply.content == "Hello, notebook."
    assert reply.tool_calls == []
    assert reply.finish_reason == "stop"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (11, 7)
    assert reply.usage.cost == 0.0  # litellm has no price for "scripted"
    assert reply.duration > 0
    (sent,) = scripted_server.requests
    assert sent["model"] == "scripted"
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, *USER]
    assert not sent.get("stream")


def test_streamed_reply_passes_deltas_in_order_with_usage(scripted_server: ScriptedServer, model: Model) -> None:
    answer = "The quick brown fox jumps over the lazy dog."
    scripted_server.script([text(answer, usage=(20, 9))])
    deltas: list[str] = []
    reply = model.generate(USER, on_delta=deltas.append)
    assert len(deltas) > 5  # really streamed, in pieces
    assert "".join(deltas) == reply.content == answer
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (20, 9)
    assert scripted_server.requests[0]["stream"] is True
    assert scripted_server.requests[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_stream_without_usage_is_counted_by_litellm(
    scripted_server: ScriptedServer, model: Model, stream: bool
) -> None:
    import litellm

    scripted_server.script([text("four score and seven years ago", send_usage=False)])
    reply = model.generate(USER, on_delta=(lambda _: None) if stream else None)
    assert reply.usage.input_tokens == litellm.token_counter(model=model.model_id, messages=USER)
    assert reply.usage.output_tokens == litellm.token_counter(model=model.model_id, text=reply.content) > 0


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_are_parsed(scripted_server: ScriptedServer, model: Model, stream: bool) -> None:
    scripted_server.script([tool_calls([("add", {"a": 2, "b": 40}), ("search", {"q": "héllo \"world\""})], "Let me.")])
    deltas: list[str] = []
    reply = model.generate(USER, tools=TOOLS, on_delta=deltas.append if stream else None)
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("add", {"a": 2, "b": 40}),
        ("search", {"q": 'héllo "world"'}),
    ]
    assert all(c.id.startswith("call_") for c in reply.tool_calls)
    assert len({c.id for c in reply.tool_calls}) == 2
    assert reply.content == "Let me."
    assert reply.finish_reason == "tool_calls"
    assert scripted_server.requests[0]["tools"] == TOOLS
    if stream:
        assert "".join(deltas) == "Let me."


@pytest.mark.parametrize("stream", [False, True])
def test_broken_tool_arguments_are_kept_raw(scripted_server: ScriptedServer, model: Model, stream: bool) -> None:
    scripted_server.script([tool_calls([("add", '{"a": 2, "b": ')])])
    reply = model.generate(USER, tools=TOOLS, on_delta=(lambda _: None) if stream else None)
    (call,) = reply.tool_calls
    assert call.name == "add"
    assert call.arguments == {RAW_ARGUMENTS: '{"a": 2, "b": '}


def test_reply_as_message_continues_the_conversation(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([tool_calls([("add", {"a": 1, "b": 2}), ("search", "not json")]), text("3")])
    first = model.generate(USER, tools=TOOLS)
    results = [{"role": "tool", "tool_call_id": c.id, "content": "3"} for c in first.tool_calls]
    second = model.generate([*USER, first.as_message(), *results], tools=TOOLS)
    assert second.content == "3"
    sent = scripted_server.requests[1]["messages"][1]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in sent["tool_calls"]] == [
        (first.tool_calls[0].id, "add", '{"a": 1, "b": 2}'),
        (first.tool_calls[1].id, "search", "not json"),  # the model's own text, sent back unchanged
    ]


def test_rate_limit_is_retried(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([error(429, "slow down"), error(429, "slow down"), text("made it")])
    assert model.generate(USER).content == "made it"
    assert len(scripted_server.requests) == 3


def test_streamed_request_is_retried_after_server_error(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([error(503, "overloaded"), text("streamed after all")])
    deltas: list[str] = []
    assert model.generate(USER, on_delta=deltas.append).content == "streamed after all"
    assert "".join(deltas) == "streamed after all"
    assert len(scripted_server.requests) == 2


def test_callback_errors_are_not_model_errors(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script(["some text", "unused"])

    def on_delta(piece: str) -> None:
        raise KeyError("display broke")

    with pytest.raises(KeyError, match="display broke"):
        model.generate(USER, on_delta=on_delta)
    assert len(scripted_server.requests) == 1  # not retried either


def test_server_errors_exhaust_retries(scripted_server: ScriptedServer) -> None:
    model = scripted_server.model(num_retries=2, retry_delay=0.01)
    scripted_server.script([error(500, "the GPU caught fire")] * 5)
    with pytest.raises(ModelError, match="GPU caught fire") as caught:
        model.generate(USER)
    assert "tried 3 times" in str(caught.value)
    assert len(scripted_server.requests) == 3  # 1 + num_retries, no hidden retries in the client


def test_rejected_key_says_what_to_set(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([error(401, "Incorrect API key provided")])
    with pytest.raises(MissingCredentials, match="Incorrect API key provided") as caught:
        model.generate(USER)
    assert "OPENAI_API_KEY" in str(caught.value) and "api_key=" in str(caught.value)
    assert len(scripted_server.requests) == 1  # not retried


def test_missing_key_fails_before_any_connection(monkeypatch: pytest.MonkeyPatch, loopback_only: list[object]) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OLLAMA_API_BASE", raising=False)
    with pytest.raises(MissingCredentials, match="set OPENAI_API_KEY .*api_key="):
        Model("openai/gpt-4o-mini").generate(USER)
    with pytest.raises(MissingCredentials, match="api_key='none'"):  # a local server: say how to pass no key
        Model("openai/local", api_base="http://127.0.0.1:9/v1").generate(USER)
    with pytest.raises(MissingCredentials, match="set OLLAMA_API_BASE .*api_base="):
        Model("ollama/llama3").generate(USER)
    assert loopback_only == []


def test_unknown_provider_suggests_prefix(loopback_only: list[object]) -> None:
    with pytest.raises(ModelNotFound, match="'openai/my-model'"):
        Model("my-model").generate(USER)
    assert loopback_only == []


def test_unknown_model_on_server(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([error(404, "The model `scripted` does not exist")])
    with pytest.raises(ModelNotFound, match="does not exist.*provider prefix"):
        model.generate(USER)


def test_refusal_carries_the_server_message(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([error(400, "maximum context length is 8192 tokens")])
    with pytest.raises(ModelRefused, match="maximum context length is 8192 tokens"):
        model.generate(USER)
    assert len(scripted_server.requests) == 1


def test_slow_server_times_out(scripted_server: ScriptedServer) -> None:
    model = scripted_server.model(timeout=0.3, num_retries=1, retry_delay=0.01)
    scripted_server.script([text("late", delay=1.0), text("late again", delay=1.0)])
    with pytest.raises(ModelTimeout, match=r"within 0.3 s \(tried 2 times\)"):
        model.generate(USER)


def test_stop_is_sent_when_supported(scripted_server: ScriptedServer, model: Model) -> None:
    assert model.supports_stop and model.supports_tools
    scripted_server.script([text("print(1)\n<end_code>\nand more chatter")])
    reply = model.generate(USER, stop=["<end_code>"])
    assert scripted_server.requests[0]["stop"] == ["<end_code>"]
    assert reply.content == "print(1)\n"


def test_a_grammar_is_sent_only_to_a_model_that_takes_one(scripted_server: ScriptedServer, model: Model) -> None:
    assert not model.supports_grammar and Model("local/qwen2.5-coder-1.5b").supports_grammar
    scripted_server.script([text("a"), text("b")])
    model.generate(USER, grammar='root ::= "a"')
    assert "grammar" not in scripted_server.requests[0]  # a provider that does not know it would refuse it
    model.supports_grammar = True  # e.g. a llama.cpp server behind api_base
    model.generate(USER, grammar='root ::= "b"')
    assert scripted_server.requests[1]["grammar"] == 'root ::= "b"'


def test_tool_choice_is_sent_with_tools_to_a_model_that_takes_it(scripted_server: ScriptedServer, model: Model) -> None:
    assert model.supports_tool_choice
    scripted_server.script([tool_calls([("add", {"a": 1, "b": 2})]), text("hello"), tool_calls([("add", {"a": 3})])])
    model.generate(USER, tools=TOOLS, tool_choice="required")
    model.generate(USER, tool_choice="required")  # no tools: nothing to require
    model.supports_tool_choice = False  # a provider that would refuse it
    model.generate(USER, tools=TOOLS, tool_choice="required")
    assert [r.get("tool_choice") for r in scripted_server.requests] == ["required", None, None]


def test_a_tool_calling_agent_requires_each_reply_to_call_a_tool(scripted_server: ScriptedServer) -> None:
    from agent_kernel.agents import ToolCallingAgent

    scripted_server.script([tool_calls([("final_answer", {"answer": "done"})])])
    with ToolCallingAgent(scripted_server.model()) as agent:
        assert agent.run("finish").output == "done"
    assert scripted_server.requests[-1]["tool_choice"] == "required"  # its answer is a tool call too


def test_a_code_agent_holds_a_model_that_takes_a_grammar_to_its_step_format(scripted_server: ScriptedServer) -> None:
    from agent_kernel.agents import CodeAgent
    from agent_kernel.agents._code import STEP_GRAMMAR

    scripted_server.script([text("Thought: done.\n```python\nfinal_answer(len('ab'))\n```")] * 2)
    for takes_grammar in (False, True):
        model = scripted_server.model()
        model.supports_grammar = takes_grammar
        with CodeAgent(model) as agent:
            assert agent.run("two").output == 2
        assert scripted_server.requests[-1].get("grammar") == (STEP_GRAMMAR if takes_grammar else None)


def test_supports_vision_comes_from_litellms_table_and_unknown_models_cannot_see() -> None:
    assert Model("openai/gpt-4o-mini").supports_vision is True
    assert Model("openai/no-such-model-here", api_base="http://127.0.0.1:9").supports_vision is False
    model = Model("openai/gpt-4o-mini")
    model.supports_vision = False  # a wrong guess is overridden like supports_stop / supports_tools
    assert model.supports_vision is False


@pytest.mark.parametrize("stream", [False, True])
def test_stop_is_applied_here_when_unsupported(scripted_server: ScriptedServer, model: Model, stream: bool) -> None:
    model.supports_stop = False  # as for a provider without `stop`
    scripted_server.script([text("print(1)\n<end_code>\nand more chatter")])
    deltas: list[str] = []
    reply = model.generate(USER, stop=["<end_code>", "Observation:"], on_delta=deltas.append if stream else None)
    assert "stop" not in scripted_server.requests[0]
    assert reply.content == "print(1)\n"
    if stream:
        assert "".join(deltas) == "print(1)\n"  # no fragment of the stop sequence was shown


def test_usage_sums_and_is_priced_for_known_models(scripted_server: ScriptedServer) -> None:
    import litellm

    model = Model("openai/gpt-4o-mini", api_base=scripted_server.url, api_key="sk-scripted")
    scripted_server.script([text("a", usage=(1000, 500)), text("b", usage=(3000, 100))])
    total = model.generate(USER).usage + model.generate(USER).usage
    prompt_cost, completion_cost = litellm.cost_per_token(model="openai/gpt-4o-mini", prompt_tokens=4000,
                                                          completion_tokens=600)
    assert (total.input_tokens, total.output_tokens) == (4000, 600)
    assert total.cost == pytest.approx(prompt_cost + completion_cost) and total.cost > 0


def test_agenerate_runs_concurrently(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([text("one", delay=0.5)], key="task A")
    scripted_server.script([text("two", delay=0.5)], key="task B")

    async def both() -> list[ModelReply]:
        ask = [model.agenerate([{"role": "user", "content": t}]) for t in ("task A", "task B")]
        return await asyncio.gather(*ask)

    started = time.monotonic()
    a, b = _aio.run_sync(both())  # the loop sync callers share
    assert (a.content, b.content) == ("one", "two")
    assert time.monotonic() - started < 0.9


def test_streaming_stops_when_cancelled(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script([text("word " * 100, chunk_delay=0.05)])  # 5 s if read to the end
    first = threading.Event()
    future = _aio.submit(model.agenerate(USER, on_delta=lambda _: first.set()))
    assert first.wait(10)
    started = time.monotonic()
    future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(2)
    assert time.monotonic() - started < 1


def test_conversations_are_keyed_by_first_user_message(scripted_server: ScriptedServer, model: Model) -> None:
    scripted_server.script(["a1", "a2"], key="task A")
    scripted_server.script(["b1"], key="task B")
    scripted_server.script(["default"])
    scripted_server.script(lambda request: f"echo {len(request['messages'])}", key="echo")

    def ask(first: str, *more: str) -> str:
        messages = [{"role": "user", "content": first}] + [{"role": "user", "content": m} for m in more]
        return model.generate(messages).content

    assert ask("New task: task B please") == "b1"
    assert ask("task A") == "a1"
    assert ask("task A", "task B") == "a2"  # the first user message decides
    assert ask("something else") == "default"
    assert ask("echo", "x", "y") == "echo 3"
    scripted_server.script(lambda request: request["no such field"], key="broken responder")
    with pytest.raises(ModelRefused, match="responder raised KeyError"):
        ask("broken responder")
    with pytest.raises(ModelRefused, match="no reply left in the conversation 'task A'"):
        ask("task A")


def test_standalone_server_process(tmp_path: Path) -> None:
    call = {"name": "add", "arguments": {"a": 1}}
    script = {"replies": ["from the file"], "conversations": {"K": [{"tool_calls": [call]}]}}
    (tmp_path / "script.json").write_text(json.dumps(script))
    server = Path(__file__).with_name("scripted_server.py")
    proc = subprocess.Popen([sys.executable, str(server), "--script", str(tmp_path / "script.json")],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        model = Model("openai/scripted", api_base=url, api_key="x", num_retries=0)
        assert model.generate(USER).content == "from the file"
        assert model.generate([{"role": "user", "content": "K"}]).tool_calls[0].arguments == {"a": 1}
    finally:
        proc.terminate()
        proc.wait(5)


def test_helpers() -> None:
    assert cut_at_stop("abc<x>def<y>", ["<y>", "<x>"]) == "abc"
    assert cut_at_stop("abc", None) == "abc"
    assert parse_arguments("") == {}
    assert parse_arguments('{"a": [1]}') == {"a": [1]}
    assert parse_arguments("[1, 2]") == {RAW_ARGUMENTS: "[1, 2]"}  # valid JSON, but not an object
    assert Usage(1, 2, 0.5) + Usage(3, 4, 0.25) == Usage(4, 6, 0.75)
    assert Reply.from_json({"tool_calls": [{"name": "f", "arguments": "{"}], "usage": [1, 2]}) == Reply(
        tool_calls=[("f", "{")], usage=(1, 2)
    )
    with pytest.raises(ValueError, match="unknown reply field"):
        Reply.from_json({"txt": "typo"})


def test_as_model_and_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Model("openai/x", api_base="http://127.0.0.1:1/v1", api_key="sk-secret")
    assert as_model(model) is model
    assert "sk-secret" not in repr(model) and "openai/x" in repr(model)
    assert as_model("anthropic/claude-x").model_id == "anthropic/claude-x"
    monkeypatch.setenv("AGENT_KERNEL_MODEL", "openai/from-env")
    assert as_model(None).model_id == "openai/from-env"
    with pytest.raises(ValueError, match="model name like"):
        Model("  ")
    with pytest.raises(TypeError, match="expected a Model"):
        as_model(3)  # type: ignore[arg-type]


def test_importing_models_does_not_import_litellm() -> None:
    code = "import sys, agent_kernel.models; assert 'litellm' not in sys.modules, 'litellm imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
