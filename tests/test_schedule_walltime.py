"""Walltimes as SLURM and PBS read them, both ways (parse, then write back), and the worker lifetime
that the job script and the workers agree on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slideseg.errors import ConfigError
from slideseg.schedule.cluster import ClusterConfig, format_walltime, jobqueue_cluster, parse_walltime


@pytest.mark.parametrize(("text", "seconds"), [
    # the forms `sbatch --time` documents: minutes, minutes:seconds, hours:minutes:seconds,
    # days-hours, days-hours:minutes, days-hours:minutes:seconds
    ("240", 240 * 60),
    ("30:15", 30 * 60 + 15),
    ("04:00:00", 4 * 3600),
    ("2-12", (2 * 24 + 12) * 3600),
    ("2-12:30", (2 * 24 + 12) * 3600 + 30 * 60),
    ("2-12:30:05", (2 * 24 + 12) * 3600 + 30 * 60 + 5),
    ("0-00:01", 60),
])
def test_slurm_forms(text: str, seconds: int) -> None:
    assert parse_walltime(text, "slurm") == seconds


@pytest.mark.parametrize(("text", "seconds"), [
    # PBS durations: [[hours:]minutes:]seconds[.milliseconds]; a bare number is seconds
    ("240", 240),
    ("10:00", 600),
    ("04:00:00", 4 * 3600),
    ("100:00:00", 100 * 3600),
    ("59.5", 60),  # fractions round up
])
def test_pbs_forms(text: str, seconds: int) -> None:
    assert parse_walltime(text, "pbs") == seconds


@pytest.mark.parametrize(("text", "kind"), [
    ("two hours", "slurm"), ("1:2:3:4", "slurm"), ("-5", "slurm"), ("1-", "slurm"), ("1-2:3:4:5", "slurm"),
    ("0", "slurm"), ("00:00:00", "pbs"), ("1-02:00:00", "pbs"), ("1.5", "slurm"), ("", "pbs"), ("a:00", "pbs"),
])
def test_bad_walltimes_say_which_forms_are_read(text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match="walltime"):
        parse_walltime(text, kind)  # type: ignore[arg-type]


@given(st.integers(1, 400 * 24 * 3600), st.sampled_from(["slurm", "pbs"]))
def test_format_then_parse_is_the_identity(seconds: int, kind: str) -> None:
    assert parse_walltime(format_walltime(seconds, kind), kind) == seconds  # type: ignore[arg-type]


def test_config_refuses_a_bad_walltime_when_built() -> None:
    with pytest.raises(ConfigError, match="D-HH:MM:SS"):
        ClusterConfig(cluster="slurm", walltime="4 hours")


@pytest.mark.parametrize(("kind", "walltime", "script_time", "lifetime"), [
    ("slurm", "240", "04:00:00", "235m"),  # 240 minutes: not one minute, as a bare number once gave
    ("slurm", "1-00:00:00", "1-00:00:00", "1435m"),
    ("pbs", "240", "00:04:00", "1m"),  # 240 seconds: the worker still lives its minimum minute
    ("pbs", "02:00:00", "02:00:00", "115m"),
])
def test_job_script_and_worker_lifetime_agree(kind: str, walltime: str, script_time: str, lifetime: str) -> None:
    pytest.importorskip("dask_jobqueue")
    cluster = jobqueue_cluster(ClusterConfig(cluster=kind, walltime=walltime), host="127.0.0.1")  # type: ignore[arg-type]
    script = cluster.job_script()
    cluster.close()
    assert script_time in script
    assert f"--lifetime {lifetime}" in script
