"""`%agent fix` / `%agent explain`: the notebook's last error, fixed (or explained) in the sandbox.

Nothing runs in the notebook's own kernel. The failing cell's source, its exception with a trimmed
traceback, and descriptions of the variables it uses go to the model; copies of those variables go
to a sandbox, where a CodeAgent reproduces the error and tries fixes. A fix is accepted only after
the fixed cell runs without error in a new sandbox, one the model's code never touched, on fresh
copies of the variables (a final-answer check): in its own sandbox the model's code could have
made anything "pass". The analyst gets a diff and decides whether to put the fixed cell in the notebook.

What looks like a credential stays out of the model's prompt and of both sandboxes: variables by
name (api_key, token, password, ...) or by value (sk-..., ghp_..., AKIA..., JWTs, long random
strings), and such literals in the cell's source and error, which the model sees as placeholders.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import itertools
import math
import re
import traceback
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .memory import Run, Usage

_TRACEBACK_FRAMES = 12
_WITHHELD = "WITHHELD_CREDENTIAL_"  # numbered, what the model sees where a credential was
_PLACEHOLDER = re.compile(_WITHHELD + r"\d+")
_MAX_STEPS = 6

EXPLAIN_TASK = """\
{variables}
The cell:
```python
{source}
```

The error:
```
{error}
```"""  # the failing cell as the model reads it; FIX_TASK wraps the same text

FIX_TASK = (
    "A cell in the user's notebook failed. Reproduce the error, find its cause, and fix the cell.\n"
    + EXPLAIN_TASK
    + "\n\nWork step by step: run the cell's code to reproduce the error, inspect the data to find the cause, "
    "run your fixed version of the whole cell to check it works, then call final_answer with the complete "
    "fixed cell source as one string. Change only what the fix needs; keep the user's style and names."
)

EXPLAIN_SYSTEM = """\
You explain errors from a data analyst's notebook. Say what went wrong, why (use the variable \
descriptions), and how to fix it, in a few sentences and at most one short code snippet. Do not \
rewrite the whole cell."""


@dataclass
class FailedCell:
    """The last cell that raised, as the model is shown it (the values stay in the notebook)."""

    source: str  # as the analyst wrote it
    error: str  # "KeyError: 'amount'" with the cell's own frames of the traceback, credentials hidden
    variables: dict[str, Any] = field(default_factory=dict)  # the notebook values the cell uses, sent
    withheld: list[str] = field(default_factory=list)  # the ones that look like credentials, not sent
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # placeholder -> the hidden text

    @property
    def shown_source(self) -> str:
        """The source as the model reads it: credential-like literals replaced by placeholders."""
        return self.hide(self.source)

    def hide(self, text: str) -> str:
        """`text` with each credential found in the cell replaced by its placeholder."""
        for placeholder, secret in self.secrets.items():
            text = text.replace(secret, placeholder)
        return text

    def reveal(self, text: str) -> str:
        """The model's text with the analyst's own values back where it kept the placeholders."""
        return _PLACEHOLDER.sub(lambda m: self.secrets.get(m.group(), m.group()), text)

    def withheld_note(self) -> str:
        """What the analyst is told was kept from the model and the sandbox ("" when nothing was)."""
        parts = [f"variable(s) {', '.join(self.withheld)}"] if self.withheld else []
        if self.secrets:
            parts.append(f"{len(self.secrets)} credential-like text(s) in the cell or its error, which the model "
                         f"saw as {', '.join(self.secrets)}")
        return f"left out because they look like credentials: {'; '.join(parts)}" if parts else ""

    def described(self) -> str:
        from .sandbox import describe

        listed = "\n".join(f"- {name}: {describe(value)}" for name, value in self.variables.items())
        text = f"Variables the cell uses (already defined in your kernel as copies):\n{listed}\n" if listed else ""
        if self.withheld:
            text += (f"Left out because they look like credentials (not defined in your kernel; do not ask for "
                     f"them): {', '.join(self.withheld)}\n")
        if self.secrets:
            text += (f"{', '.join(self.secrets)} in the cell stand for credentials left out; keep them as they "
                     "are in the fixed cell\n")
        return text


@dataclass
class Fix:
    """What `%agent fix` found: the fixed cell (None if no fix passed verification) and the run."""

    cell: FailedCell
    run: Run
    fixed: str | None

    @property
    def verified(self) -> bool:
        return self.fixed is not None

    @property
    def diff(self) -> str:
        """Shown in the notebook's outputs, so with credentials hidden as the model saw them."""
        if self.fixed is None:
            return ""
        lines = difflib.unified_diff(self.cell.shown_source.splitlines(keepends=True),
                                     self.cell.hide(self.fixed).splitlines(keepends=True), "failing cell", "fixed cell")
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def failed_cell(source: str, error: BaseException, namespace: dict[str, Any], transform: Any = None) -> FailedCell:
    """The cell, its error with the traceback cut to the cell's own frames, and the values it uses,
    without what looks like a credential."""
    python = transform(source) if transform is not None else source  # IPython syntax (%magics) as Python
    used = _used_values(python, namespace)
    withheld = [name for name, value in used.items() if _credential_name(name) or _holds_credential(value)]
    error_text = _error_text(error)
    found = _credential_literals(python) | {used[n] for n in withheld if isinstance(used[n], str) and len(used[n]) >= 4}
    found |= {m.group() for text in (source, error_text) for m in _CREDENTIAL_SHAPE.finditer(text)}
    secrets = {f"{_WITHHELD}{i}": s for i, s in enumerate(sorted(found, key=len, reverse=True), 1)}
    cell = FailedCell(source=source, error="", variables={k: v for k, v in used.items() if k not in withheld},
                      withheld=withheld, secrets=secrets)
    cell.error = cell.hide(error_text)
    return cell


# -- what looks like a credential ------------------------------------------------------------------

_CREDENTIAL_WORDS = frozenset({
    "apikey", "token", "secret", "secrets", "password", "passwd", "pwd", "passphrase", "credential",
    "credentials", "creds", "auth", "oauth", "authorization", "bearer", "cookie", "cookies", "jwt",
    "privatekey", "secretkey", "accesskey", "authtoken", "accesstoken",
})  # fmt: skip
_CREDENTIAL_PARTS = ("secret", "password", "passwd", "credential", "apikey", "authtoken", "accesstoken")
_CREDENTIAL_SHAPE = re.compile("|".join([
    r"\bsk-[A-Za-z0-9_-]{16,}",                       # OpenAI, Anthropic (sk-ant-), many others
    r"\b[spr]k_(?:live|test)_[A-Za-z0-9]{16,}",       # Stripe
    r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_\w{30,}",  # GitHub
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                  # AWS access key ids
    r"\bAIza[0-9A-Za-z_-]{35}",                        # Google API keys
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",                # Slack
    r"\bhf_[A-Za-z0-9]{30,}|\bglpat-[A-Za-z0-9_-]{20,}",  # Hugging Face, GitLab
    r"\beyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}",          # JWTs
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^\x00]*?(?:-----END [A-Z ]*PRIVATE KEY-----|\Z)",
]))
_RANDOM_RUN = re.compile(r"[A-Za-z0-9_-]{32,}")  # a long token of key-ish characters, random-looking below
_SCAN_CHARS = 100_000  # of one string, looked at for credentials
_SCAN_ITEMS = 1_000  # items of a container, looked at


def _credential_name(name: str) -> bool:
    """api_key, OPENAI_API_KEY, hfToken, db_password, auth_header, secret, creds, ... (not `key` or `tokens`)."""
    words = [w for w in re.split(r"[^a-z]+", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()) if w]
    joined = "".join(words)
    return (any(w in _CREDENTIAL_WORDS for w in words) or any(p in joined for p in _CREDENTIAL_PARTS)
            or (len(words) > 1 and words[-1] == "key"))


def _credential_text(text: str) -> bool:
    text = text[:_SCAN_CHARS]
    return bool(_CREDENTIAL_SHAPE.search(text)) or any(_random(m.group()) for m in _RANDOM_RUN.finditer(text))


def _random(token: str) -> bool:
    """Mixed case and digits, and about as varied as random text (an identifier or a hash is not)."""
    if not (any(c.isupper() for c in token) and any(c.islower() for c in token) and any(c.isdigit() for c in token)):
        return False
    counts = Counter(token)
    entropy = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
    return entropy >= 4.0


def _holds_credential(value: Any, depth: int = 0) -> bool:
    """A credential-shaped string in the value: itself, or inside a list, tuple, set or dict (whose
    keys are names: {"Authorization": ...}). Frames and arrays are data, and are not looked into."""
    if isinstance(value, str):
        return _credential_text(value)
    if isinstance(value, (bytes, bytearray)):
        return _credential_text(bytes(value[:_SCAN_CHARS]).decode("latin-1"))
    if depth >= 3:
        return False
    if isinstance(value, dict):
        return any((isinstance(k, str) and _credential_name(k) and isinstance(v, (str, bytes)) and len(v) > 0)
                   or _holds_credential(k, depth + 1) or _holds_credential(v, depth + 1)
                   for k, v in itertools.islice(value.items(), _SCAN_ITEMS))
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_credential(v, depth + 1) for v in itertools.islice(value, _SCAN_ITEMS))
    return False


def _credential_literals(source: str) -> set[str]:
    """String literals the cell gives to a credential's name: `api_key = "..."`, `f(token="...")`,
    `{"Authorization": "..."}`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    found: list[Any] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and _credential_name(t.id) for t in targets):
                found.append(node.value)
        elif isinstance(node, ast.keyword) and node.arg and _credential_name(node.arg):
            found.append(node.value)
        elif isinstance(node, ast.Dict):
            found += [v for k, v in zip(node.keys, node.values)
                      if isinstance(k, ast.Constant) and isinstance(k.value, str) and _credential_name(k.value)]
    return {n.value for n in found if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) >= 4}


def _error_text(error: BaseException) -> str:
    """`Type: message` after the frames of user code (IPython's own frames are not the user's)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/IPython/" not in f.filename]
    shown = traceback.format_list(frames[-_TRACEBACK_FRAMES:])
    return "".join(["Traceback (most recent call last):\n", *shown, *traceback.format_exception_only(error)]).strip()


def _used_values(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Notebook values the cell reads by name: data, not modules, functions or IPython's own names."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    names = dict.fromkeys(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
    return {
        name: namespace[name]
        for name in names
        if name in namespace and not name.startswith("_") and name not in ("In", "Out", "exit", "quit", "get_ipython")
        and not hasattr(builtins, name)
        and not isinstance(namespace[name], (types.ModuleType, types.FunctionType, type))
    }


def _imports(source: str) -> list[str]:
    """Top-level modules the cell imports: the sandbox must allow them to reproduce the cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    found += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    return sorted({name.split(".")[0] for name in found})


def fix(cell: FailedCell, model: Any, **agent_options: Any) -> Fix:
    """Run a CodeAgent on the failure in a sandbox; the fix it gives must run cleanly in another."""
    from .agents import CodeAgent
    from .sandbox import AsyncSandbox

    agent = CodeAgent(model, imports=_imports(cell.source), max_steps=agent_options.pop("max_steps", None) or _MAX_STEPS,
                      **agent_options)
    verified: set[str] = set()

    async def runs_cleanly(answer: Any, run: Run) -> bool:
        """The fix must not raise in a new sandbox on fresh copies of the variables: the agent's own
        sandbox ran the model's code, which can make any cell pass there (a patched builtin, an input
        transformer), and so could each earlier answer."""
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError("give the complete fixed cell source as one string")
        async with AsyncSandbox(**agent.sandbox_options()) as fresh:
            if cell.variables:
                await fresh.push(**cell.variables)
            checked = await fresh.execute(answer)
        if checked.error is not None:
            raise ValueError(f"the fixed cell still fails on fresh copies of the variables: "
                             f"{checked.error.name}: {checked.error.value}")
        verified.add(answer)
        return True

    agent.final_answer_checks.append(runs_cleanly)
    task = FIX_TASK.format(variables=cell.described(), source=cell.shown_source, error=cell.error)
    with agent:
        run = agent.run(task, variables=cell.variables)
    answer = run.output if run.state == "success" and isinstance(run.output, str) else None
    return Fix(cell=cell, run=run, fixed=cell.reveal(answer) if answer in verified else None)


def explain(cell: FailedCell, model: Any) -> tuple[str, Usage]:
    """One model call: what went wrong and how to fix it, in words."""
    messages = [{"role": "system", "content": EXPLAIN_SYSTEM},
                {"role": "user", "content": EXPLAIN_TASK.format(variables=cell.described(), source=cell.shown_source,
                                                                error=cell.error)}]
    reply = model.generate(messages)
    return reply.content.strip(), reply.usage
