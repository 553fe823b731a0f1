"""A one-node SLURM cluster on loopback for the tests: munged, slurmctld and slurmd started in a
temporary folder with a generated slurm.conf, torn down by `stop()`. Credentials live 10 s
(cred_expire), so a requeued job starts after 11 s instead of SLURM's default 121 s.

Example:
    cluster = SlurmCluster.start(tmp)    # raises ClusterUnavailable with the reason
    job = cluster.sbatch("--wrap", "true")
    cluster.wait([job])
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE"}


class ClusterUnavailable(Exception):
    """SLURM or munge is not installed here or does not start (the message says which)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)),
                                      None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=kerabltest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=600
KillWait=5
PlugStackConfig={root}/plugstack.conf
NodeName=kerabl1 NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=kerabl1 Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root: Path, tools: dict[str, str]):
        self.root, self.tools = root, tools
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        self.processes: list[subprocess.Popen] = []

    @classmethod
    def start(cls, root: Path, cpus: int = 4) -> "SlurmCluster":
        tools = {name: _which(name) for name in DAEMONS}
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            raise ClusterUnavailable(f"{', '.join(missing)} not installed (apt-get install "
                                     "slurm-wlm munge)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("starting slurmd needs root")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        for sub in ("state", "spool"):
            (root / sub).mkdir(exist_ok=True)
        (root / "plugstack.conf").write_text("")
        (root / "slurm.conf").write_text(SLURM_CONF.format(
            host=socket.gethostname().split(".")[0], root=root, cpus=cpus,
            ctld_port=_free_port(), slurmd_port=_free_port()))
        cluster = cls(root, tools)
        try:
            cluster._start_daemons()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, *argv: str) -> None:
        log = open(self.root / f"{Path(argv[0]).name}.out", "ab")
        self.processes.append(subprocess.Popen(argv, env=self.env, stdout=log, stderr=log,
                                               stdin=subprocess.DEVNULL))

    def _start_daemons(self) -> None:
        r, t = self.root, self.tools
        subprocess.run([t["mungekey"], "--create", f"--keyfile={r}/munge.key"], check=True,
                       capture_output=True)
        self._spawn(t["munged"], "--foreground", "--force", f"--socket={r}/munge.socket",
                    f"--key-file={r}/munge.key", f"--pid-file={r}/munged.pid",
                    f"--log-file={r}/munged.log", f"--seed-file={r}/munged.seed")
        self._wait_for(lambda: (r / "munge.socket").exists(), "munged", 10)
        self._spawn(t["slurmctld"], "-D", "-i", "-f", f"{r}/slurm.conf")
        self._spawn(t["slurmd"], "-D", "-N", "kerabl1", "-f", f"{r}/slurm.conf")
        self._wait_for(self._node_idle, "slurmd registering with slurmctld", 30)

    def _node_idle(self) -> bool:
        got = subprocess.run([self.tools["scontrol"], "-o", "show", "node", "kerabl1"],
                             env=self.env, capture_output=True, text=True)
        return got.returncode == 0 and "State=IDLE" in got.stdout

    def _wait_for(self, ready, what: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead:
                raise ClusterUnavailable(f"{Path(dead[0]).name} exited: {self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterUnavailable(f"timed out waiting for {what}: {self.log_tail()}")

    def log_tail(self) -> str:
        lines = []
        for log in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            lines += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()[-3:]]
        return " | ".join(lines)

    def run(self, tool: str, *args: str) -> str:
        got = subprocess.run([self.tools[tool], *args], env=self.env, capture_output=True,
                             text=True)
        if got.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)}: {got.stderr.strip()}")
        return got.stdout

    def states(self, job: str) -> dict[str, str]:
        """{job id (array tasks as JOB_TASK): state} of a job known to slurmctld."""
        out = self.run("scontrol", "-o", "show", "job", job)
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            task = fields.get("ArrayTaskId")
            key = f"{fields['ArrayJobId']}_{task}" if task else fields["JobId"]
            states[key] = fields["JobState"]
        return states

    def wait(self, jobs, seconds: float = 150) -> dict[str, str]:
        """Wait until every task of `jobs` is finished (or one can never start); their states."""
        end = time.monotonic() + seconds
        while True:
            states = {k: v for job in jobs for k, v in self.states(job).items()}
            if all(s in FINISHED for s in states.values()):
                return states
            if any("DependencyNeverSatisfied" in self.run("scontrol", "-o", "show", "job", job)
                   for job in jobs):
                return states  # a job that never starts: the caller's check says which
            if time.monotonic() > end:
                raise TimeoutError(f"jobs not finished after {seconds} s: {states}")
            time.sleep(0.5)

    def stop(self) -> None:
        for p in reversed(self.processes):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.processes):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()
