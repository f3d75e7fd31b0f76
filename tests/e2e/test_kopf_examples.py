"""kopf's own e2e test of its example operators, run against the shard (issue 19).

kopf's wheel has no examples; its sdist on PyPI has them and the test that runs them
(``tests/e2e/test_examples.py``). The sdist of the pinned release is downloaded once with pip (hash checked)
and unpacked under ``.venv/kopf-examples`` (``KCP_KOPF_EXAMPLES`` overrides the directory). The test then
runs kopf's pytest on that file, in kopf's source tree, so everything is kopf's: its ``conftest.py`` (every
warning an error -- an unclosed socket's ResourceWarning too -- and no asyncio task left behind), its
``KopfRunner``, its checks of the operator's log, and ``kubectl apply/delete -f examples/obj.yaml``, with
the KUBECONFIG of a fresh shard. Only the examples that need no pods are run (the shard runs none).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

kopf = pytest.importorskip("kopf")

VERSION = "1.45.2"
SHA256 = "5baa180cfdebe1c5095d2a0a96d7d91825b6920541a0825c55719c36abb0054f"
EXAMPLES = ("01-minimal", "04-events", "05-handlers", "06-peering", "07-subhandlers", "13-hooks", "14-daemons",
            "15-timers", "16-indexing")
#: kopf's pyproject gives every test 2 s and adds looptime (not installed: its unit tests need it, these do not);
#: our hypothesis plugin is not kopf's (importing it at the session's end trips a CPython 3.11 ast bug there)
PYTEST_OVERRIDES = ("-o", "timeout=180", "-o", "addopts=--strict-markers", "-p", "no:hypothesispytest")


def _cache_dir() -> Path:
    configured = os.environ.get("KCP_KOPF_EXAMPLES")
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "kopf-examples"


@pytest.fixture(scope="session")
def kopf_source() -> Path:
    """kopf's source tree of the pinned release (fetched with pip from the package index once)."""
    cache = _cache_dir()
    tree = cache / f"kopf-{VERSION}"
    if (tree / "tests" / "e2e" / "test_examples.py").is_file():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    requirements = cache / "requirements.txt"
    requirements.write_text(f"kopf=={VERSION} --hash=sha256:{SHA256}\n")
    subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                    "--no-binary", ":all:", "--require-hashes", "-r", str(requirements), "-d", str(cache)],
                   check=True, timeout=300)
    with tarfile.open(cache / f"kopf-{VERSION}.tar.gz") as archive:
        archive.extractall(cache, filter="data")
    return tree


def _run_examples(source: Path, env: dict, names) -> tuple[set[str], str]:
    """kopf's pytest over these examples: (the names that passed, its whole output)."""
    tests = [f"tests/e2e/test_examples.py::test_all_examples_are_runnable[{name}]" for name in names]
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *PYTEST_OVERRIDES,
                             "--only-e2e", "-rA", "-q", *tests],
                            cwd=source, env=env, capture_output=True, text=True, timeout=900)
    passed = {line.rsplit("[", 1)[-1].rstrip("]") for line in result.stdout.splitlines() if line.startswith("PASSED")}
    return passed, result.stdout + result.stderr


def _tail(output: str) -> str:
    return output[-20000:]


#: What a failure that kopf's shutdown races is: an operator's loop closed while one of its TLS connections
#: still waited for the server's answer to its close_notify (aiohttp closes the session without waiting; the
#: server answers within a few ms: see the note of issue 19), found as an unclosed transport by the next test.
_SHUTDOWN_RACE = "ResourceWarning: unclosed transport <_SelectorSocketTransport"


def test_kopf_examples_pass_with_kopf_strict_warnings(kcp_shard, kopf_source, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "KUBECONFIG": kcp_shard.kubeconfig, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    passed, output = _run_examples(kopf_source, env, EXAMPLES)
    failed = [name for name in EXAMPLES if name not in passed]
    if failed:
        # A second chance only for the shutdown race, never for a failure of the operator itself.
        assert _SHUTDOWN_RACE in output and "AssertionError" not in output, _tail(output)
        again, output = _run_examples(kopf_source, env, failed)
        assert again == set(failed), _tail(output)
