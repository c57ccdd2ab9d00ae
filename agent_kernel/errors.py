"""The errors agent_kernel raises, under one root: `except AgentKernelError` catches any of them.

Each error also keeps the built-in base it always had (as a second base), so existing `except
RuntimeError` / `except ValueError` clauses go on working. Each is defined beside the code that
raises it; this module is the root and the map (a leaf: it imports nothing, so the sandbox kernel
can import it too).

    AgentKernelError
    ├── ModelError                         models: a model call failed; the message says what to do
    │   ├── MissingCredentials               no API key / endpoint found
    │   ├── ModelNotFound                    litellm does not know the provider
    │   ├── ModelRefused                     the provider refused the request
    │   └── ModelTimeout                     no reply in time, retries included
    ├── LocalModelError                    local_model: the embedded llama.cpp cannot run the request
    ├── ModelFetchError                    model_fetch: a local model could not be fetched or found
    ├── ToolArgumentError (ValueError)     tools: the model's arguments do not fit the schema
    ├── ToolError (RuntimeError)           tools: a tool ran and failed; the message is for the model
    │   └── MCPToolError                     mcp: the server's tool reported an error
    ├── SearchError (RuntimeError)         base_tools: the search service failed
    ├── URLNotAllowed (ValueError)         base_tools: visit_webpage refused a URL (SSRF guard)
    ├── PageError (RuntimeError)           base_tools: a page could not be read
    ├── MCPConnectionError (RuntimeError)  mcp: the server could not be started or reached
    ├── WidgetsUnavailable (ValueError)    review: widgets asked for where they cannot show
    ├── SandboxError (RuntimeError)        sandbox: the sandbox could not do what was asked
    ├── TransferError (ValueError)         sandbox: a value could not cross the boundary
    ├── Malformed (ValueError)             sandbox: a kernel message the host will not read (dropped, and said)
    ├── IsolationUnavailable (RuntimeError) sandbox: a required isolation layer (strict=True)
    └── ZygoteUnavailable (RuntimeError)   sandbox: the zygote cannot fork this kernel (exec instead)

Not here, on purpose: `HostFunctionError` is raised inside the sandbox kernel, to the model's code
(it is that program's error, not the host's); warnings (`UnpricedModelWarning`) are not errors.
"""

from __future__ import annotations


class AgentKernelError(Exception):
    """The root of every error agent_kernel raises; the message says what went wrong and what to do."""
