"""Every shell command in the README, DEVELOP.md and docs/ runs as written.

Each line of a ```sh block in README.md, DEVELOP.md and docs/*.md is a command (a
trailing ``# comment`` is not part of it).  Every command is either

* listed in ``RUN_ELSEWHERE`` with the place that runs it and why it is not
  run here (the test suite itself, long benchmarks, the full wheel matrix);
* listed in ``SERVERS`` with a probe: it is started, must serve the probe,
  then is stopped with SIGINT (Ctrl-C) and must exit;
* listed in ``EXPECTED_FAILURES`` (a command shown failing on purpose) with
  its exit status and a text its output must contain;
* or run here: it must exit 0 within ``TIMEOUT`` seconds.

To add a command to the docs: put it in a ```sh block; if it runs as written
in a venv with the project installed (``pip install .``, then ``pip install
-e .[test]`` from docs/compat-tests.md), nothing else is needed; if it is a
server, add it to ``SERVERS`` with a probe (``framed``/``raw`` on a ``port``,
``"from-log"`` for ``--port 0``, or a ``unix`` path; ``http-on-cserver``;
``metrics``: ``GET /metrics`` on the ``port``);
if it cannot run here, add it to ``RUN_ELSEWHERE`` with where it runs and
why not here.  Keys are the command exactly as extracted (comment removed).

``test_every_command_is_known`` (fast, every env) fails on a listed command
that is no longer in the docs.  ``test_commands_run_as_written`` (the tox env
``docs``, ``CSERVER_DOCS_RUN=1``) runs them: in a fresh venv (``python -m
venv``) and a fresh copy of the checkout (the files git tracks), README.md
first, then docs/compat-tests.md, then DEVELOP.md, then the other files by
name, each command once, in order.  A command that names a path of the
checkout (``.``, ``.[bench]``, ``bench/...``, ``tests/...``, ``cserver/...``,
``setup.py``; quoted or not) runs in the checkout's top directory, as the
docs mean; any other in a scratch directory, as a user's would.  A new
command thus fails the docs env until it runs as written, or is added to one
of the two tables.

Servers run in a network namespace of their own where ``unshare -n`` is
allowed (the documented fixed ports, 9000 and 8000, cannot collide with
anything else on the machine), else on the machine's loopback.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.environ.get("CSERVER_SOURCE_TREE") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))
RUN = os.environ.get("CSERVER_DOCS_RUN") == "1"
TIMEOUT = 600  # one command; a build of the project takes 1-2 minutes

#: Commands not run here: command -> where they run, and why not here.
RUN_ELSEWHERE = {
    "pip install tox && tox":
        ".ci/run runs it literally (CI's test command); here it would run the "
        "whole matrix inside one of its envs",
    "tools/build_wheels.sh":
        "by hand for a release (one ~1 min build per CPython); .ci/run's wheel "
        "step runs the same script for one interpreter and tests its wheel "
        "where no compiler is reachable",
    "python bench/run.py":
        "by hand: the full benchmark (~25 min) behind the README's table",
    "python bench/run.py --servers tls --workloads tls-1c-d1,tls-50c-d1,tls-50c-d16,"
    "tls-10c-d4-64k,tls-churn":
        "by hand: the TLS rows of the benchmark (~8 min); tests/unit/test_bench_harness.py "
        "runs TLS rounds and the harness's TLS rows on short rounds",
    "python bench/run.py --quick":
        "by hand (~2 min of two busy cores); tests/unit/test_bench_harness.py "
        "runs the harness's pieces on short rounds",
    "python bench/bench_compat.py":
        "by hand: a benchmark (minutes); test_commands_run_as_written starts it "
        "with --help on the installed package",
    "python bench/bench_decode.py":
        "by hand: a benchmark (minutes); started here with --help, as above",
    "python bench/bench_framed_echo.py":
        "by hand: a benchmark (minutes); started here with --help, as above",
    "python3 -m pytest -n 2 tests":
        "the whole suite, which every tox env runs on the installed sdist; "
        "here it would double this env's time",
    "CSERVER_PURE=1 python3 -m pytest -n 2 tests":
        "the pure-mode suite, which the tox env pure runs",
    "tox":
        ".ci/run runs the whole matrix (its test command, after provisioning "
        "3.14/3.15); here it would run the matrix inside one of its envs",
    'export PATH="$PATH:$(bash .ci/provision-pythons)"':
        ".ci/run runs the same script before tox (root, ~760 MB, 1-3 min "
        "the first time)",
    "pip install tox && tox -e typing":
        ".ci/run runs tox -e typing after the matrix",
    "tox -e fuzz":
        ".ci/run runs it (FUZZ_SECONDS=60 tox -e asan,fuzz)",
    "tox -e asan":
        ".ci/run runs it (FUZZ_SECONDS=60 tox -e asan,fuzz)",
    "PYTHONPATH=$PWD python tests/fuzz/fuzz_framing.py -max_total_time=28800 "
    "/tmp/fuzz-corpus tests/fuzz/corpus/framing":
        "by hand: an 8-hour fuzz run; tox -e fuzz runs the same target for 60 s",
    'CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-wrapv '
    '-O1 -g" LDFLAGS="-fsanitize=address,undefined" python setup.py build_ext '
    '--inplace -j 2 --force':
        "tox -e asan makes the same sanitized build (from the sdist) and runs "
        "the same tests under it",
    "LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 "
    "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONPATH=$PWD python -m "
    "pytest -n 2 tests/unit tests/hostile":
        "tox -e asan runs these tests under the sanitized build",
    "python setup.py build_ext --inplace -j 2 --force":
        "the rebuild after the by-hand sanitizer run above, which tox -e asan "
        "replaces",
    "PYTHONPATH=$PWD python -m pytest -n 2 tests":
        "the whole suite on the in-place build (DEVELOP.md), which every tox "
        "env runs on the installed sdist; here it would double this env's time",
    "CSERVER_PURE=1 PYTHONPATH=$PWD python -m pytest -n 2 tests":
        "the pure-mode suite on the in-place build, which the tox env pure runs",
    "pip install tox && tox -e lint":
        ".ci/run runs tox -e lint first",
    "tox -e py311":
        "tox runs it (.ci/run's test command runs the whole matrix); here it "
        "would run the suite inside this env",
}

#: Server commands: command -> probe (see _probe).
SERVERS = {
    "pip install . && cserver echo": {"kind": "framed", "port": 9000},
    "SHADOW=$(python -c 'import cserver; print(cserver.shadow_path())') && "
    "PYTHONPATH=$SHADOW python -m http.server -b 127.0.0.1":
        {"kind": "http-on-cserver", "port": 8000},
    "python -m cserver echo": {"kind": "framed", "port": 9000},
    "python -m cserver echo --raw --port 0": {"kind": "raw", "port": "from-log"},
    "python -m cserver echo --unix /tmp/echo.sock --workers 4 --idle-timeout 30":
        {"kind": "framed", "unix": "/tmp/echo.sock"},
    # docs/systemd.md: the first connection starts the server on the
    # inherited socket (systemd-socket-activate: Debian's systemd package)
    "systemd-socket-activate -l 127.0.0.1:9000 python -m cserver echo --systemd --workers 2":
        {"kind": "framed", "port": 9000},
    "python -m cserver echo --port 0 --workers 2 --drain-delay 2":
        {"kind": "framed", "port": "from-log"},
    # docs/metrics.md: probed on the metrics endpoint
    "python -m cserver echo --workers 2 --metrics 127.0.0.1:9100":
        {"kind": "metrics", "port": 9100},
}

#: Commands shown failing on purpose: command -> (exit status, text its
#: output must contain).  Run like the others; any other status fails.
EXPECTED_FAILURES = {
}

#: Run before the commands (and not a command of the docs): the benchmark
#: scripts start on the installed package from the checkout's top directory.
BENCH_SCRIPTS = ["bench/bench_compat.py", "bench/bench_decode.py", "bench/bench_framed_echo.py"]

FIRST = ["README.md", "docs/compat-tests.md", "DEVELOP.md"]


def doc_files():
    docs = sorted("docs/" + n for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))
    return FIRST + [d for d in docs if d not in FIRST]


def commands(path):
    """The commands of the ```sh blocks of ``path`` (relative to ROOT), in order."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read()
    found = []
    for block in re.findall(r"^[ \t]*```sh[ \t]*\n(.*?)^[ \t]*```", text, re.S | re.M):
        pending = ""
        for line in block.splitlines():
            line = pending + line.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            command = strip_comment(line)
            if command:
                found.append(command)
    return found


def strip_comment(line):
    """``line`` without a trailing ``# comment`` (a ``#`` after whitespace,
    outside quotes, as sh reads it), stripped."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


def all_commands():
    seen = []
    for path in doc_files():
        for command in commands(path):
            if command not in seen:
                seen.append(command)
    return seen


def test_extraction_sees_the_readme_commands():
    # The parser itself: comments go, commands stay whole.
    assert (strip_comment("pip install .[bench]          # cserver + uvloop")
            == "pip install .[bench]")
    assert strip_comment("echo 'a # b'  # c") == "echo 'a # b'"
    readme = commands("README.md")
    assert "pip install tox && tox" in readme
    assert any("cserver echo" in c for c in readme)


def test_develop_md_commands_are_checked():
    # DEVELOP.md's commands are among those checked, and the ones that name
    # the checkout (quoted node ids, cserver/ sources) run in it.
    assert "DEVELOP.md" in doc_files()
    develop = commands("DEVELOP.md")
    assert "python setup.py build_ext --inplace -j 2" in develop
    assert set(develop) <= set(all_commands())
    assert needs_checkout('PYTHONPATH=$PWD python -m pytest "tests/unit/test_x.py::test_y[epoll]"')
    assert needs_checkout("cython -a -o /tmp/x/_loop.c cserver/_loop.pyx")
    assert not needs_checkout("python -m cserver echo --raw --port 0")


def test_every_command_is_known():
    # A command listed in a table but gone from the docs: the table is stale.
    documented = set(all_commands())
    stale = sorted((set(RUN_ELSEWHERE) | set(SERVERS) | set(EXPECTED_FAILURES)) - documented)
    assert not stale, "listed in tests/test_docs.py but in no ```sh block: %r" % stale
    tables = [set(RUN_ELSEWHERE), set(SERVERS), set(EXPECTED_FAILURES)]
    assert all(not a & b for i, a in enumerate(tables) for b in tables[i + 1:])


def test_readme_has_no_relative_links():
    # An index page (PyPI) shows the README alone: a link into docs/ or to
    # another file of the repository is dead there.
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", text, re.M)
    relative = [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]
    assert not relative, "relative links in README.md (dead on an index page): %r" % relative


# --- running them (tox -e docs) -----------------------------------------------

NEEDS_CHECKOUT = re.compile(r"(^|\s|=)[\"']?(\.(\[[^\]]*\])?|\./\S*|bench/\S*|tests/?\S*|"
                            r"tools/\S*|cserver/\S*|setup\.py|docs/\S*)(\s|$)")


def needs_checkout(command):
    return bool(NEEDS_CHECKOUT.search(command))


def copy_checkout(dest):
    """The files git tracks (a fresh clone's), with the working tree's content."""
    try:
        listed = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: no git
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
            ".tox", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.c", ".git"))
        for c_source in ("bench/loadgen.c", "bench/c_echo.c"):
            shutil.copy2(os.path.join(ROOT, c_source), os.path.join(dest, c_source))
        return dest
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel))
    return dest


class Session:
    """A fresh venv and checkout copy; runs commands the way a user would."""

    def __init__(self, base):
        self.checkout = copy_checkout(os.path.join(base, "checkout"))
        self.scratch = os.path.join(base, "scratch")
        os.makedirs(self.scratch)
        self.venv = os.path.join(base, "venv")
        subprocess.run([sys.executable, "-m", "venv", self.venv], check=True, timeout=120)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CSERVER_", "TOX_", "PYTEST_", "VIRTUAL_ENV", "PYTHON"))}
        # The test's own environment (a tox env) must not lend its programs.
        own = {os.path.dirname(sys.executable), os.path.join(sys.prefix, "bin")}
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in own]
        env["PATH"] = os.pathsep.join([os.path.join(self.venv, "bin")] + path)
        env["VIRTUAL_ENV"] = self.venv
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        self.env = env

    def cwd_for(self, command):
        return self.checkout if needs_checkout(command) else self.scratch

    def run(self, command, timeout=TIMEOUT, cwd=None):
        proc = subprocess.run(["sh", "-c", command], cwd=cwd or self.cwd_for(command), env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        return proc.returncode, proc.stdout.decode(errors="replace")


# Runs inside the server's network namespace (or on the host's): brings the
# loopback up, starts the command, probes it, stops it with SIGINT.
DRIVER = textwrap.dedent(r'''
    import fcntl, json, os, re, select, signal, socket, struct, subprocess, sys, time
    spec = json.loads(sys.argv[1])
    if spec["netns"]:
        s = socket.socket()
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))    # SIOCSIFFLAGS, IFF_UP
        s.close()
    probe = spec["probe"]
    if "unix" in probe and os.path.exists(probe["unix"]):
        # A stale socket file is the CLI's to replace; a live one is in use.
        try:
            with socket.socket(socket.AF_UNIX) as other:
                other.connect(probe["unix"])
            sys.exit("%s: another server is listening there" % probe["unix"])
        except OSError:
            pass
    proc = subprocess.Popen(["sh", "-c", spec["command"]], cwd=spec["cwd"], env=spec["env"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    out = b""
    result = {"served": False}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                out += chunk
            port = probe.get("port")
            if port == "from-log":
                m = re.search(rb"listening on [0-9.]+:(\d+)", out)
                if not m:
                    continue
                port = int(m.group(1))
            try:
                if "unix" in probe:
                    conn = socket.socket(socket.AF_UNIX)
                    conn.settimeout(10)
                    conn.connect(probe["unix"])
                else:
                    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                continue
            with conn:
                kind = probe["kind"]
                if kind == "framed":
                    conn.sendall(struct.pack("!I", 5) + b"hello")
                    want = struct.pack("!I", 5) + b"hello"
                elif kind == "raw":
                    conn.sendall(b"hello")
                    want = b"hello"
                elif kind == "metrics":
                    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    want = b"HTTP/1.1 200 OK\r\n"
                else:  # http-on-cserver
                    conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                    want = b"HTTP/1.0 200"
                got = b""
                while len(got) < len(want):
                    data = conn.recv(65536)
                    if not data:
                        break
                    got += data
                result["reply"] = got[:len(want)].decode("latin-1")
                result["served"] = got[:len(want)] == want
            if kind == "http-on-cserver":
                # The server process runs on cserver's compiled socketserver,
                # not on the stdlib's: its memory maps show the extension.
                maps = ""
                for pid in os.listdir("/proc"):
                    if pid.isdigit():
                        try:
                            with open("/proc/%s/stat" % pid) as f:
                                fields = f.read().rsplit(")", 1)[1].split()
                            if int(fields[2]) == proc.pid:  # process group
                                with open("/proc/%s/maps" % pid) as f:
                                    maps += f.read()
                        except (OSError, IndexError, ValueError):
                            pass
                result["on_cserver"] = bool(re.search(r"cserver/socketserver\.cpython.*\.so", maps))
            break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the group
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                result["killed"] = True
        try:
            os.killpg(proc.pid, 0)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            result["leftover"] = True
        except ProcessLookupError:
            pass
        out += proc.stdout.read()
        result["returncode"] = proc.returncode
        result["output"] = out.decode(errors="replace")[-4000:]
        print(json.dumps(result))
''')


def netns_prefix():
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        try:
            if subprocess.run(prefix + ["true"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def run_server(session, command, probe):
    """Start ``command``, probe it, stop it; the driver's result."""
    parts = command.split(" && ")
    # Steps before the server (pip install .) run here: they need the network.
    for step in parts[:-1]:
        if not step.startswith(("pip ", "python -m pip ")):
            break
        code, out = session.run(step, cwd=session.cwd_for(command))
        assert code == 0, "%r (before %r) exited %d:\n%s" % (step, command, code, out[-4000:])
        parts = parts[1:]
    server = " && ".join(parts)
    prefix = netns_prefix() or []
    spec = {"command": server, "cwd": session.cwd_for(command), "env": session.env,
            "probe": probe, "netns": bool(prefix)}
    proc = subprocess.run(prefix + [sys.executable, "-c", DRIVER, json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


@pytest.mark.skipif(not RUN, reason="runs in the tox env docs (CSERVER_DOCS_RUN=1)")
def test_commands_run_as_written(tmp_path):
    session = Session(str(tmp_path))
    failures = []
    ran = []
    for command in all_commands():
        if command in RUN_ELSEWHERE:
            continue
        started = time.monotonic()
        if command in SERVERS:
            result = run_server(session, command, SERVERS[command])
            ok = (result["served"] and not result.get("killed") and not result.get("leftover")
                  and result.get("on_cserver", True))
            if not ok:
                failures.append("server %r: %s" % (command, json.dumps(result, indent=1)))
        else:
            try:
                code, out = session.run(command)
            except subprocess.TimeoutExpired:
                code, out = None, "timed out after %d s (a server? list it in SERVERS)" % TIMEOUT
            status, text = EXPECTED_FAILURES.get(command, (0, ""))
            if code != status or text not in out:
                failures.append("%r exited %s (expected %d%s):\n%s" % (
                    command, code, status, " and %r in its output" % text if text else "",
                    out[-4000:]))
        note = ""
        if command in SERVERS:
            note = "  [served: %r%s, exit %s]" % (
                result.get("reply"), ", on cserver" if result.get("on_cserver") else "",
                result.get("returncode"))
        ran.append("%5.1f s  %s%s" % (time.monotonic() - started, command, note))
        if command.startswith("pip install ."):
            # After an install from the checkout: the benchmark scripts start
            # on the installed package from the checkout's top directory.
            for script in BENCH_SCRIPTS:
                code, out = session.run("python %s --help" % script, cwd=session.checkout,
                                        timeout=120)
                if code != 0:
                    failures.append("python %s --help exited %d:\n%s" % (script, code, out[-4000:]))
    print("\n".join(ran))
    assert not failures, "\n\n".join(failures)


@pytest.mark.skipif(not RUN, reason="runs in the tox env docs (CSERVER_DOCS_RUN=1)")
def test_shadow_recipe_in_an_uncompiled_checkout_fails_loudly(tmp_path):
    # The README's shadow_path() one-liner where `python -c` imports an
    # uncompiled checkout: it must fail and serve nothing, never serve on
    # the stdlib's socketserver.
    command = [c for c in SERVERS if c.startswith("SHADOW=")][0]
    assert command in commands("README.md")
    checkout = copy_checkout(str(tmp_path / "checkout"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSERVER_", "PYTHON"))}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen(["sh", "-c", command], cwd=checkout, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it serves: the regression
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError("the recipe served instead of failing:\n%s" % (out + err).decode())
    assert proc.returncode != 0
    err = err.decode()
    assert "cserver was imported from its source tree" in err, err
    assert "Serving HTTP" not in err + out.decode()
