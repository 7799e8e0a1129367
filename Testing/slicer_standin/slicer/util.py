"""Stand-in for slicer.util: pip through the real pip of this interpreter (see ../README.md)."""

import json
import os
import subprocess
import sys


def record(entry: dict) -> None:
    path = os.environ.get("SEGSUITE_STANDIN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")


def _next_report() -> str:
    folder = os.environ.get("PIP_REPORT_DIR")
    if not folder:
        return ""
    index = len(os.listdir(folder))
    return os.path.join(folder, f"report-{index:03d}.json")


def _executePythonModule(module, args):
    """python -m module args; CalledProcessError when it fails (v5.10.0 launchConsoleProcess + logProcessOutput)."""
    env = dict(os.environ)
    report = _next_report() if module == "pip" else ""
    if report:
        env["PIP_REPORT"] = report
        open(report, "w").close()  # reserve the name; pip writes it
    done = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True)
    record({"module": module, "args": list(args), "returncode": done.returncode,
            "output": (done.stdout + done.stderr)[-4000:], "report": report})
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, [module, *args], output=done.stdout, stderr=done.stderr)


def pip_install(requirements, **kwargs):
    if os.environ.get("SEGSUITE_STANDIN_SLICER") == "5.12":  # delegates to slicer.packaging at v5.12.3
        from . import packaging

        return packaging.pip_install(requirements, **kwargs)
    import shlex

    args = ["install", *(shlex.split(requirements) if isinstance(requirements, str) else requirements)]
    _executePythonModule("pip", args)


def _answer(kind: str, text: str) -> bool:
    answer = os.environ.get("SEGSUITE_STANDIN_CONFIRM", "yes") == "yes"
    record({"dialog": kind, "text": text, "answer": answer})
    return answer


def confirmOkCancelDisplay(text, windowTitle=None, **kwargs):
    return _answer("okcancel", text)


def confirmYesNoDisplay(text, windowTitle=None, **kwargs):
    return _answer("yesno", text)


def restart():
    record({"event": "restart"})
