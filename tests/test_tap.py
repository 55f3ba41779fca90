"""`twistd s2sgate` and the `s2sgate` command, run as an operator would: from outside the source tree."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.lab.wait import untilSync

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def run(argv, cwd):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_twistd_finds_the_plugin_once(tmp_path):
    result = run(["twistd", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("s2sgate") == 1, result.stdout


def test_twistd_s2sgate_help(tmp_path):
    result = run(["twistd", "s2sgate", "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_bad_config_stops_twistd_with_one_line(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('local_domains = ["example.com"]\n[component]\njid = "s2s.example.com"\n'
                      'secret = "x"\n[s2s]\nuse_starttls = "maybe"\n')
    result = run(["twistd", "-n", "--pidfile=", "s2sgate", "--config", str(config)], tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and "s2s.use_starttls" in lines[0] and "allowed" in lines[0]
    assert "Traceback" not in result.stderr


def test_json_logs_with_a_daemonised_twistd_stop_start_up_with_one_line(tmp_path, example_config):
    pidfile = tmp_path / "twistd.pid"
    result = run(["twistd", f"--pidfile={pidfile}", f"--logfile={tmp_path / 'twistd.log'}",
                  "s2sgate", "--config", str(example_config), "--log-format", "json"], tmp_path)
    if result.returncode == 0 and untilSync(pidfile.exists, timeout=10):
        os.kill(int(pidfile.read_text()), signal.SIGTERM)   # it daemonised: stop it
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(example_config) in lines[0] and "log.format" in lines[0] and "-n" in lines[0]


def test_config_check_of_the_shipped_example(tmp_path, example_config):
    result = run(["s2sgate", "config", "check", str(example_config)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_version(tmp_path):
    result = run(["s2sgate", "--version"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("s2sgate ")


def test_twistd_runs_the_gateway_with_json_logs_and_never_logs_the_secret(tmp_path):
    import json
    import signal

    config = tmp_path / "s2sgate.toml"
    config.write_text(
        'local_domains = ["example.com"]\n'
        '[component]\njid = "s2s.example.com"\nhost = "127.0.0.1"\nport = 1\n'
        'secret = "do-not-log-this-secret"\n'
        '[s2s]\nlisten = ["tcp:0:interface=127.0.0.1"]\nuse_starttls = "false"\n'
        'shared = "nor-this-dialback-secret"\n'
        '[admin]\nlisten = ""\n[log]\nlevel = "debug"\n')
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"

    def events():
        found = []
        for line in stdout.read_text().splitlines():
            if line.strip().startswith(("{", "\x1e")):
                try:
                    found.append(json.loads(line.strip("\x1e")))
                except json.JSONDecodeError:
                    pass   # still being written
        return found

    def failedToReachC2s():
        return any(e.get("event") == "component.network_failure" for e in events())

    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(["twistd", "-n", "--pidfile=", "s2sgate", "--config", str(config),
                                 "--log-format", "json"], cwd=tmp_path, env=env,
                                stdout=out, stderr=err, text=True)
        try:
            # Started, and tried the c2s port (nothing listens on port 1).
            untilSync(lambda: failedToReachC2s() or proc.poll() is not None, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    assert failedToReachC2s(), stdout.read_text()[-2000:] + stderr.read_text()[-2000:]
    logged = stdout.read_text() + stderr.read_text()
    assert "do-not-log-this-secret" not in logged
    assert "nor-this-dialback-secret" not in logged


def test_the_wheel_ships_the_plugin_and_the_status_page_but_no_plugin_package(tmp_path):
    """What `pip install .` installs: twistd finds the plugin in site-packages/twisted/plugins."""
    import zipfile

    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                             "-w", str(tmp_path), str(REPO)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("s2sgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/s2sgate_plugin.py" in names
    assert "s2sgate/ops/admin/status.html" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache") or n.startswith("tests/")]
