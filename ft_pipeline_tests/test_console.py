"""What `ft-pipeline run` prints: the stages logger turns the run's log lines into a progress bar per activity
(training steps, each model's answers) and one line per finished stage or model."""

import io
import logging

from ft_pipeline.runs.console import StageHandler


def info(msg: str) -> logging.LogRecord:
    record = logging.LogRecord("ft_pipeline.stages", logging.INFO, __file__, 1, msg, None, None)
    record.dagster_meta = {"orig_message": msg}
    return record


def test_each_model_evaluated_gets_its_own_bar_and_then_one_line(monkeypatch):
    err, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    handler = StageHandler(out)
    handler.emit(info("step 5/10 loss=0.50"))
    assert (handler.bar.desc, handler.bar.n, handler.bar.total) == ("  training", 5, 10)
    handler.emit(info("evaluating base (holdout): 32/255 answers"))
    handler.emit(info("evaluating base (holdout): 64/255 answers"))
    assert (handler.bar.desc, handler.bar.n, handler.bar.total) == ("  evaluating base (holdout)", 64, 255)
    handler.emit(info("evaluating tuned (holdout): 8/255 answers"))  # the next model: a bar of its own
    assert (handler.bar.desc, handler.bar.n) == ("  evaluating tuned (holdout)", 8)
    handler.emit(info("evaluated tuned (holdout): 255 answers generated"))
    assert handler.bar is None
    assert out.getvalue() == "        evaluated tuned (holdout): 255 answers generated\n"
    assert "evaluating base (holdout)" in err.getvalue()  # drawn on stderr, beside the run's lines
    handler.emit(info("something else"))  # other log lines stay in the run log only
    assert out.getvalue().count("\n") == 1
