"""`local/<name or path.gguf>`: a GGUF model run in this process by llama-cpp-python, behind litellm.

The provider is registered with litellm as a custom provider (`register()`, done when a `local/`
model is first used), so a local model goes through the same `litellm.acompletion` path, the same
streaming, usage and stop handling as any hosted model. The prompt is built with the model's own
chat template (from the GGUF header); tool calls come back in the Hermes `<tool_call>{...}</tool_call>`
form that Qwen's template asks for, and are returned as OpenAI tool calls.

One engine per model file is kept loaded: an agent's steps share their prompt prefix, so llama.cpp
keeps the KV cache of that prefix and only evaluates the new tokens (the usage reports them as
`prompt_tokens_details.cached_tokens`). llama.cpp contexts are not thread-safe: an engine runs one
generation at a time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _litellm
from .errors import AgentKernelError
from .model_fetch import DEFAULT_LOCAL_MODEL, ModelFetchError, model_path

PROVIDER = "local"
DEFAULT_N_CTX = 8192  # an agent run of ~10 steps with small observations fits
DEFAULT_MAX_TOKENS = 1024  # one reply; a small model that loops stops here instead of filling the context
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_TOOL_OPEN = "<tool_call>"
_CALL_MARKUP = re.compile(r"</?tools?>|</?tool_call>|```(?:json)?")


class LocalModelError(AgentKernelError):
    """A local model cannot run the request; carries the HTTP-like status litellm maps to its errors."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass
class Timings:
    """Where the time of the last generation went (wall clock, as the caller saw it)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV cache was kept from the previous call
    completion_tokens: int = 0
    prompt_seconds: float = 0.0  # request to first token: evaluating the uncached prompt
    generation_seconds: float = 0.0  # first token to last

    @property
    def prompt_tokens_per_second(self) -> float:
        evaluated = self.prompt_tokens - self.cached_tokens
        return evaluated / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generation_tokens_per_second(self) -> float:
        return (self.completion_tokens - 1) / self.generation_seconds if self.generation_seconds else 0.0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _llama_cpp() -> Any:
    # OpenMP's default is to spin while waiting for work: on a machine whose cores are busy with other
    # processes that starves the spinning threads' siblings (measured on 2 shared cores: 4 tokens/s
    # with spinning, 19 without). Read by libgomp when llama.cpp loads it; a user's setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp
    except ImportError:
        raise LocalModelError(
            500,
            "local/ models need llama-cpp-python: pip install 'agent-kernel[local]' "
            "(it builds llama.cpp from source; see docs/local-models.md)",
        ) from None
    return llama_cpp


_MAX_GRAMMARS = 16  # checked grammars an engine keeps


class LocalEngine:
    """One GGUF model loaded in this process, with its chat template and its KV cache."""

    def __init__(self, path: Path, n_ctx: int = DEFAULT_N_CTX, n_threads: int | None = None) -> None:
        llama_cpp = _llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        started = time.monotonic()
        threads = n_threads or _cores()
        self.path = path
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        self.load_seconds = time.monotonic() - started
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise LocalModelError(
                400, f"{path.name} has no chat template in its GGUF header: it is a base model, not a chat model; "
                "use an instruct model (python -m agent_kernel models list)"
            )
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        # Typed as Any: llama_cpp's TypedDict message types are stricter than the OpenAI-shaped dicts litellm
        # passes, and mypy sees them only where llama-cpp-python is installed.
        self._formatter: Any = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos),
            bos_token=self._token_text(bos),
        )
        self.lock = threading.Lock()
        self.last_timings = Timings()
        self._grammars: dict[str, Any] = {}  # GBNF text -> its checked LlamaGrammar

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token != -1 else ""

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> tuple[list[int], list[str]]:
        """The chat as the model's template renders it, in tokens, and the template's stop strings."""
        try:
            formatted = self._formatter(messages=_template_messages(messages), tools=tools or None)
        except Exception as e:  # the template's raise_exception, or a message shape it does not take
            raise LocalModelError(400, f"the chat template of {self.path.name} rejected the messages: {e}") from e
        tokens = self.llm.tokenize(formatted.prompt.encode("utf-8"), add_bos=False, special=True)
        stops = [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or ())
        return tokens, [s for s in stops if s]

    def grammar(self, gbnf: str) -> Any:
        """A GBNF grammar checked against this model's vocabulary, once per text. llama-cpp-python
        hands the text to llama.cpp unchecked, and a grammar that does not parse crashes the process
        when sampling starts; llama.cpp's own parser (a sampler made and freed here) says first."""
        if gbnf not in self._grammars:
            llama_cpp = _llama_cpp()
            vocab = self.llm._model.vocab  # noqa: SLF001 - the vocabulary pointer llama.cpp's parser needs
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
            if not sampler:
                raise LocalModelError(400, "the grammar does not parse as GBNF (llama.cpp's grammar format)")
            llama_cpp.llama_sampler_free(sampler)
            if len(self._grammars) >= _MAX_GRAMMARS:
                self._grammars.clear()
            self._grammars[gbnf] = llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)
        return self._grammars[gbnf]

    def reset(self) -> None:
        """Forget the KV cache: the next call evaluates its whole prompt."""
        with self.lock:
            self.llm.reset()

    def generate(
        self,
        tokens: list[int],
        *,
        stop: list[str],
        max_tokens: int,
        sampling: dict[str, Any],
        cancelled: threading.Event,
    ) -> Iterator[tuple[str, str | None]]:
        """(text, finish_reason) pieces of one reply; the KV cache of the shared prefix is reused."""
        room = self.n_ctx - len(tokens)
        if room <= 0:
            raise LocalModelError(
                400, f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}: "
                "shorten the task or pass n_ctx=... to Model('local/...')"
            )
        with self.lock:
            cached = _common_prefix(self.llm.input_ids[: self.llm.n_tokens].tolist(), tokens)
            timings = Timings(prompt_tokens=len(tokens), cached_tokens=cached)
            self.last_timings = timings
            started = time.monotonic()
            first = None
            pieces = self.llm.create_completion(
                tokens, max_tokens=min(max_tokens, room), stop=stop, stream=True, **sampling
            )
            text = ""
            try:
                for chunk in pieces:
                    choice = chunk["choices"][0]
                    if first is None:
                        first = time.monotonic()
                        timings.prompt_seconds = first - started
                    text += choice["text"]
                    yield choice["text"], choice.get("finish_reason")
                    if cancelled.is_set():
                        break
            finally:
                pieces.close()
                end = time.monotonic()
                timings.generation_seconds = end - (first or end)
                timings.completion_tokens = len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-format messages in the shape chat templates expect: text content, and tool-call
    arguments as objects (templates render them with `tojson`)."""
    shaped = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        elif content is None:
            message["content"] = ""
        if message.get("tool_calls"):
            message["tool_calls"] = [_template_call(c) for c in message["tool_calls"]]
        shaped.append(message)
    return shaped


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # the model's own malformed text goes back to it as it was
    return {**call, "function": function}


def parse_tool_calls(text: str, names: Iterable[str] = ()) -> tuple[str, list[dict[str, Any]]]:
    """Split a reply into its text and OpenAI tool calls (arguments as JSON text).

    Calls are Hermes `<tool_call>{...}</tool_call>` blocks, as the Qwen template asks. Small coder
    models often write the JSON objects without those tags instead (bare, in a ```json fence, in a
    list, or in `<tools>` tags copied from the prompt): any JSON object in the reply that names an
    offered tool (`names`) and has `arguments` is then a call."""
    bodies = [m.group(1) for m in _TOOL_CALL.finditer(text)]
    if bodies:
        return _TOOL_CALL.sub("", text).strip(), [_call(i, body) for i, body in enumerate(bodies)]
    wanted, decoder = set(names), json.JSONDecoder()
    calls: list[dict[str, Any]] = []
    rest, start = "", 0
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict) and value.get("name") in wanted and "arguments" in value:
            calls.append(_call(len(calls), json.dumps(value)))
            rest += text[start:position]
            start = end
        position = text.find("{", end)
    if not calls:
        return text, []
    rest = _CALL_MARKUP.sub("", rest + text[start:]).strip()
    return ("" if not rest.strip("[], \n") else rest), calls


def _call(index: int, body: str) -> dict[str, Any]:
    try:
        value = json.loads(body, strict=False)  # a raw newline in a code string is still the code
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        arguments = value.get("arguments", value.get("parameters", {}))
        name, raw = value["name"], arguments if isinstance(arguments, str) else json.dumps(arguments)
    else:
        name, raw = "", body  # the agent tells the model its call was not valid JSON
    return {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function", "index": index,
            "function": {"name": name, "arguments": raw}}


class _HoldToolCalls:
    """Streams a reply's text but not its tool calls: text stops where a `<tool_call>` begins, and a
    reply that starts like bare JSON (or a fence, or a tag) is held to the end, when it is known to be a
    call or not."""

    def __init__(self) -> None:
        self.text = ""
        self._sent = 0
        self._in_call = False

    def add(self, piece: str) -> str:
        self.text += piece
        if not self._in_call and _TOOL_OPEN in self.text:
            self._in_call = True
            return self._send(self.text.index(_TOOL_OPEN))
        head = self.text.lstrip()
        if self._in_call or not head or (self._sent == 0 and head[0] in "{[`<"):
            return ""
        return self._send(len(self.text) - _partial_suffix(self.text, _TOOL_OPEN))

    def _send(self, upto: int) -> str:
        piece = self.text[self._sent : upto] if upto > self._sent else ""
        self._sent = max(self._sent, upto)
        return piece

    def rest(self, was_call: bool) -> str:
        """What is left to show once the reply is complete (nothing, if it was a call)."""
        return "" if self._in_call or was_call else self._send(len(self.text))


def _partial_suffix(text: str, marker: str) -> int:
    """How many of text's last characters could be the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


# --- engines, per model file -----------------------------------------------------------------

_engines: dict[tuple[Path, int], LocalEngine] = {}
_engines_lock = threading.Lock()


def engine(name_or_path: str = DEFAULT_LOCAL_MODEL, n_ctx: int = DEFAULT_N_CTX) -> LocalEngine:
    """The loaded engine for a catalog name or a .gguf path (loaded once per process)."""
    try:
        path = model_path(name_or_path).resolve()
    except ModelFetchError as e:
        raise LocalModelError(404, str(e)) from None
    with _engines_lock:
        if (path, n_ctx) not in _engines:
            _engines[(path, n_ctx)] = LocalEngine(path, n_ctx=n_ctx)
        return _engines[(path, n_ctx)]


# --- litellm provider --------------------------------------------------------------------------

_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "seed", "repeat_penalty",
             "frequency_penalty", "presence_penalty")


def _chunks(
    model: str, messages: list[dict[str, Any]], params: dict[str, Any], cancelled: threading.Event
) -> Iterator[dict[str, Any]]:
    """One reply as litellm GenericStreamingChunks: text, then tool calls, then the usage."""
    llm = engine(model, int(params.get("n_ctx") or DEFAULT_N_CTX))
    tools = params.get("tools") or None
    tokens, template_stop = llm.prompt(messages, tools)
    stop = params.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    max_tokens = int(params.get("max_tokens") or params.get("max_completion_tokens") or DEFAULT_MAX_TOKENS)
    sampling = {k: params[k] for k in _SAMPLING if params.get(k) is not None}
    sampling.setdefault("temperature", 0.0)  # greedy: an agent's code should not depend on the dice
    sampling.setdefault("seed", 0)  # ... and where it samples, the same prompt draws the same reply
    grammar = params.get("grammar") or (calls_grammar(tools, params.get("tool_choice")) if tools else None)
    if grammar:
        sampling["grammar"] = llm.grammar(str(grammar))
    held = _HoldToolCalls() if tools else None
    finish = "stop"
    for piece, reason in llm.generate(tokens, stop=template_stop + stop, max_tokens=max_tokens,
                                      sampling=sampling, cancelled=cancelled):
        finish = reason or finish
        text = held.add(piece) if held else piece
        if text:
            yield _chunk(text)
    calls: list[dict[str, Any]] = []
    if held:
        calls = parse_tool_calls(held.text, [t["function"]["name"] for t in tools or () if "function" in t])[1]
        if tail := held.rest(was_call=bool(calls)):
            yield _chunk(tail)
        for call in calls:
            yield _chunk("", tool_use=call)
    timings = llm.last_timings
    usage = {
        "prompt_tokens": timings.prompt_tokens,
        "completion_tokens": timings.completion_tokens,
        "total_tokens": timings.prompt_tokens + timings.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": timings.cached_tokens},
    }
    yield _chunk("", finish="tool_calls" if calls else finish, usage=usage)


def _chosen(tools: list[dict[str, Any]], tool_choice: Any) -> list[dict[str, Any]]:
    """The tools a reply must call (OpenAI's `tool_choice`): all for "required", the named one for
    {"type": "function", "function": {"name": ...}}, none otherwise ("auto", "none", absent). A name
    no offered tool has is refused, as OpenAI refuses it, rather than leaving the reply free."""
    if tool_choice == "required":
        return tools
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        named = [t for t in tools if (t.get("function") or {}).get("name") == name]
        if not named:
            raise LocalModelError(400, f"tool_choice names {name!r}, which is not among the tools offered")
        return named
    return []


def calls_grammar(tools: list[dict[str, Any]], tool_choice: Any = "required") -> str | None:
    """GBNF for a reply of Hermes tool calls only, one or more, each naming one of the tools
    `tool_choice` picks with the arguments its JSON schema describes (llama-cpp-python's schema
    converter writes that part). None when no tool is chosen: the reply is free. A run offers the
    same tools on every request: the grammar is made once for them."""
    return _calls_grammar(json.dumps(_chosen(tools, tool_choice), sort_keys=True))


@functools.lru_cache(maxsize=16)
def _calls_grammar(tools_json: str) -> str | None:
    functions = ((t.get("function") or {}) for t in json.loads(tools_json))
    bodies = [{"type": "object", "required": ["name", "arguments"],
               "properties": {"name": {"const": f["name"]},
                              "arguments": _typed(f.get("parameters") or {"type": "object"})}}
              for f in functions if isinstance(f.get("name"), str)]
    if not bodies:
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        call = json_schema_to_gbnf(json.dumps({"oneOf": bodies}), prop_order=["name", "arguments"])
    except Exception as e:  # the converter raises bare Exceptions on schemas it does not cover
        raise LocalModelError(400, f"a tool's parameters cannot be turned into a grammar: {e}") from None
    # The converter names its top rule root: here it is the body of one call.
    call = re.sub(r"^root ::=", "call-body ::=", call, count=1, flags=re.MULTILINE)
    return (f'root ::= tool-call ("\\n" tool-call)*\n'
            f'tool-call ::= "{_TOOL_OPEN}\\n" call-body "\\n</tool_call>"\n{call}')


_ANY_JSON = ["string", "number", "boolean", "null", "array", "object"]
_SHAPED_BY = ("type", "$ref", "const", "enum", "anyOf", "oneOf", "allOf", "properties", "items", "prefixItems")
_SCHEMA_MAPS = ("properties",)  # name -> schema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")  # [schema, ...]
_SCHEMAS = ("items", "additionalProperties")  # one schema


def _typed(schema: Any) -> Any:
    """`schema` with every part that says nothing of its shape (`{"description": ...}`: any value,
    as a parameter typed Any is) made to say so; the converter takes such a part for an error."""
    if not isinstance(schema, dict):
        return schema
    typed = dict(schema)
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            typed[key] = {name: _typed(part) for name, part in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            typed[key] = [_typed(part) for part in value]
        elif key in _SCHEMAS:
            typed[key] = _typed(value)
    if not any(key in typed for key in _SHAPED_BY):
        typed["type"] = _ANY_JSON
    return typed


def _chunk(text: str, *, tool_use: dict[str, Any] | None = None, finish: str | None = None,
           usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"text": text, "tool_use": tool_use, "is_finished": finish is not None,
            "finish_reason": finish or "", "usage": usage, "index": 0}


async def _in_thread(make: Callable[[threading.Event], Iterator[dict[str, Any]]]) -> AsyncIterator[dict[str, Any]]:
    """A blocking generator run on its own thread, its items passed to the event loop as they come.
    Closing the async iterator (an interrupted run) stops the generation at the next token."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            cancelled.set()

    def work() -> None:
        try:
            for item in make(cancelled):
                put("item", item)
                if cancelled.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting side to raise there
            put("error", e)
        finally:
            put("done", None)

    threading.Thread(target=work, name="agent-kernel-local-model", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancelled.set()


def _fill(model_response: Any, chunks: list[dict[str, Any]]) -> Any:
    """A complete (non-streamed) litellm ModelResponse from the chunks of one reply."""
    litellm = _litellm.load()

    text = "".join(c["text"] for c in chunks)
    calls = [c["tool_use"] for c in chunks if c["tool_use"]]
    last = chunks[-1]
    message = litellm.Message(content=text, tool_calls=[{k: v for k, v in c.items() if k != "index"} for c in calls] or None)
    model_response.choices[0].message = message
    model_response.choices[0].finish_reason = last["finish_reason"]
    model_response.created = int(time.time())
    model_response.usage = litellm.Usage(**last["usage"])
    return model_response


def _make_handler() -> Any:
    """The litellm CustomLLM for `local/` (built here: its base class needs litellm imported)."""
    from litellm.llms.custom_llm import CustomLLM, CustomLLMError

    def fail(e: LocalModelError) -> CustomLLMError:
        return CustomLLMError(status_code=e.status_code, message=e.message)

    class LocalLLM(CustomLLM):
        def completion(self, model: str, messages: list, *args: Any, model_response: Any = None,
                       optional_params: dict | None = None, **kwargs: Any) -> Any:
            try:
                chunks = list(_chunks(model, messages, optional_params or {}, threading.Event()))
            except LocalModelError as e:
                raise fail(e) from e
            return _fill(model_response, chunks)

        # litellm types the chunks as its GenericStreamingChunk TypedDict; ours are those dicts, built untyped
        def streaming(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,  # type: ignore[override]
                      **kwargs: Any) -> Iterator[dict[str, Any]]:
            try:
                yield from _chunks(model, messages, optional_params or {}, threading.Event())
            except LocalModelError as e:
                raise fail(e) from e

        async def acompletion(self, model: str, messages: list, *args: Any, model_response: Any = None,
                              optional_params: dict | None = None, **kwargs: Any) -> Any:
            chunks = [c async for c in self.astreaming(model, messages, optional_params=optional_params)]
            return _fill(model_response, chunks)

        async def astreaming(self, model: str, messages: list, *args: Any, optional_params: dict | None = None,  # type: ignore[override]
                             **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
            params = optional_params or {}
            try:
                async for chunk in _in_thread(lambda cancelled: _chunks(model, messages, params, cancelled)):
                    yield chunk
            except LocalModelError as e:
                raise fail(e) from e

    return LocalLLM()


_registered = False


def register() -> None:
    """Make `local/...` a litellm provider (idempotent; costs nothing until a model is loaded)."""
    global _registered
    if _registered:
        return
    litellm = _litellm.load()
    from litellm.utils import custom_llm_setup

    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": _make_handler()})
    custom_llm_setup()
    _registered = True
