"""Clean output: a DataselError reaches the user exactly once, as the run's last lines, without Snakemake's
CalledProcessError tail; rule logs hold the step's log lines; bars end at 100%; harmless warnings are silenced."""

from __future__ import annotations

import copy
import logging
import warnings
from types import SimpleNamespace

import polars as pl
from conftest import TINY, snakemake, write_config

from datasel.runtime import progress, quiet_harmless_warnings
from datasel.snakemake_entry import EXIT_DATASEL, ErrorSummary, read_error


def test_a_data_error_is_printed_once_as_the_last_lines(tmp_path):
    data = tmp_path / "mine.csv"
    pl.DataFrame({"a": [1.0, 2.0] * 20, "b": [0.5, 0.1] * 20, "target": [0, 1] * 20}).write_csv(data)
    cfg = copy.deepcopy(TINY)
    cfg["data"] = {"source": "files", "path": str(data), "label_column": "label"}  # the user's column is `target`
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, "results/examples/examples.parquet", check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    needle = "no label column 'label'"
    assert out.count(needle) == 1, out[-3000:]
    assert "CalledProcessError" not in out and "Traceback" not in out and "Shell command: None" not in out
    tail = [line for line in out.splitlines() if line.strip()][-2:]
    assert needle in tail[0] and str(data) in tail[0] and tail[1].strip().startswith("fix:"), tail
    logtext = (tmp_path / "logs" / "results" / "prepare.log").read_text()
    assert "step prepare" in logtext and needle in logtext and "fix:" in logtext


def test_rule_logs_hold_the_step_log_lines(tmp_path):
    write_config(tmp_path, TINY)
    # one train job per selection trains both seeds (TINY has seeds 0 and 1) in one process
    snakemake(tmp_path, "results/metrics/train/random_keep50/seed0.parquet", timeout=300)
    assert (tmp_path / "results/metrics/train/random_keep50/seed1.parquet").exists()
    logs = tmp_path / "logs" / "results"
    select = (logs / "select" / "random_keep50.log").read_text()
    assert "step select root=results policy=random pct=50: started" in select and "step select: done" in select
    train = (logs / "train" / "random_keep50.log").read_text()
    assert "step train root=results selection=random_keep50: started" in train
    assert "step train seed=0: work" in train and "step train seed=1: work" in train and "step train: done" in train


def _record(msg: str, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("snakemake.logging", logging.ERROR, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_error_summary_drops_the_tail_and_ends_with_the_message(tmp_path):
    log = tmp_path / "select.log"
    log.write_text("2026 datasel INFO step select: started\n2026 datasel ERROR datasel error in rule 'select': "
                   "file s.parquet: bad\n  fix: rerun\n")
    assert read_error(log) == "datasel error in rule 'select': file s.parquet: bad\n  fix: rerun"
    f = ErrorSummary()
    assert f.filter(_record("Error in rule select, jobid: 3", rule_name="select", log=[str(log)]))
    assert not f.filter(_record(f"RuleException:\nCalledProcessError in file x:\nCommand 'python s.py' returned "
                                f"non-zero exit status {EXIT_DATASEL}."))
    # a crash (exit 1) keeps Snakemake's report: its traceback is the only clue
    assert f.filter(_record("RuleException:\nCalledProcessError ... returned non-zero exit status 1."))
    final = _record("WorkflowError:\nAt least one job did not complete successfully.")
    assert f.filter(final) and final.getMessage() == read_error(log)


def test_error_summary_leaves_runs_without_datasel_errors_alone(tmp_path):
    f = ErrorSummary()
    (tmp_path / "x.log").write_text("Traceback (most recent call last):\nValueError: boom\n")
    f.filter(_record("Error in rule x", rule_name="x", log=[str(tmp_path / "x.log")]))
    final = _record("WorkflowError:\nAt least one job did not complete successfully.")
    assert f.filter(final) and "At least one job" in final.getMessage()


def test_progress_bar_reaches_total_when_pulled_with_next(monkeypatch, capsys):
    monkeypatch.setenv("DATASEL_PROGRESS", "1")
    bar = progress(range(200), desc="train", unit="step")
    for _ in range(200):  # the training loops pull exactly `steps` items and stop, never exhausting the iterator
        next(bar)
    err = capsys.readouterr().err
    assert "200/200" in err and "199/200" not in err.rsplit("\r", 1)[-1]
    assert list(progress([1, 2, 3], desc="loop")) == [1, 2, 3]
    assert "3/3" in capsys.readouterr().err


def test_harmless_warnings_are_silenced_others_are_logged(caplog):
    # an earlier in-process step may have left warnings captured, with pytest's recorder installed over it since
    logging.captureWarnings(False)
    with warnings.catch_warnings():
        quiet_harmless_warnings()
        with caplog.at_level(logging.WARNING, logger="py.warnings"):
            warnings.warn(
                "The given NumPy array is not writable, and PyTorch does not support it", UserWarning, stacklevel=1
            )
            warnings.warn("something a user should read", UserWarning, stacklevel=1)
    logging.captureWarnings(False)
    text = caplog.text
    assert "something a user should read" in text and "not writable" not in text


def test_one_train_job_over_seeds_gives_each_seed_its_own_result(tmp_path, tiny_examples):
    """A seed's metrics do not depend on the seeds trained before it in the same process."""
    from test_bad_input import fake_job

    from datasel.pipeline import train
    from datasel.selection.make import make_selection
    from datasel.snakemake_entry import over_outputs, run_step
    from datasel.store import write_table

    df, meta = tiny_examples
    res = tmp_path / "results"
    write_table(df, res / "examples.parquet", "examples")
    (res / "meta.json").write_text(__import__("json").dumps(meta))
    write_table(make_selection(df, None, "random", {"policy": "random"}, 0.5, 0), res / "sel.parquet", "selections")
    training = {**TINY["training"], "budget": {"unit": "steps", "value": 5}}

    def run(seeds: list[int], tag: str) -> list[pl.DataFrame]:
        outs = [str(tmp_path / tag / f"seed{s}.parquet") for s in seeds]
        job = fake_job(tmp_path, f"train_{tag}", params=SimpleNamespace(seeds=seeds), output=outs)
        run_step(job, over_outputs(lambda s, seed, outs: train(
            res / "examples.parquet", res / "meta.json", res / "sel.parquet", outs[0], training, int(seed),
            "random_keep50", {"method": "random", "fraction": 0.5}), "seed", "seeds"))
        return [pl.read_parquet(p) for p in outs]

    together = run([0, 1], "both")
    alone = run([1], "alone")
    assert together[1].equals(alone[0])
    assert together[1].get_column("seed").unique().to_list() == [1]
    assert not together[0].equals(together[1])
