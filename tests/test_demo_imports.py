"""The demo still serves after a model has loaded (a fresh interpreter: pytest's anyio plugin would
import anyio early and hide the failure)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_anyio_backend_imports_after_a_model_loads_once_the_demo_is_imported() -> None:
    code = textwrap.dedent("""
        import ihs_sight_demo.app  # the demo's imports come first, as in `ihs-sight demo`
        import ihs_sight as ihs
        ihs.load_model("default")  # nnsight patches `object` once a model is wrapped
        import anyio._backends._asyncio, anyio.abc  # what the server's first request imports
        from anyio.abc import SocketAttribute
        print("ok", SocketAttribute.__name__)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok SocketAttribute")
