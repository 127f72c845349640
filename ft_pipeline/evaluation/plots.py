"""Evaluation plots: the training loss curve and a metric comparison of base, tuned and champion, as matplotlib
figures (for mlflow.log_figure) and as small PNG data URIs (for markdown in the Dagster UI)."""

from __future__ import annotations

import base64
import io

# Metrics on a 0-1 scale, plotted side by side; chrF (0-100) is scaled to fit.
COMPARED = [("json_valid", "JSON valid", 1.0), ("field_accuracy", "field acc.", 1.0), ("exact_match", "exact", 1.0),
            ("chrf", "chrF/100", 0.01), ("rouge_l", "ROUGE-L", 1.0)]


def _figure(width: float = 5.0, height: float = 3.0):
    # A bare Figure draws with the Agg canvas: no pyplot, no global backend state, safe in worker processes.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=80, layout="constrained")


def loss_history(client, run_id: str,
                 keys: tuple[str, ...] = ("loss", "eval_loss")) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs of each metric in `keys` that the training run logged, in step order."""
    out = {}
    for key in keys:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if points:
            out[key] = points
    return out


def loss_curve(history: dict[str, list[tuple[int, float]]]):
    """Train loss (and eval loss when the run logged it) by step."""
    if not history:
        raise ValueError("the training run logged no loss: nothing to plot")
    fig = _figure()
    ax = fig.add_subplot()
    for key, points in history.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3,
                label={"loss": "train loss", "eval_loss": "eval loss"}.get(key, key))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title("training loss")
    return fig


def metric_comparison(metrics: dict[str, dict]):
    """Grouped bars: one group per metric, one bar per model (base, tuned, champion)."""
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot()
    names = list(metrics)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(COMPARED))]
        ax.bar(xs, [metrics[name][k] * scale for k, _, scale in COMPARED], width, label=name)
    ax.set_xticks(range(len(COMPARED)), [label for _, label, _ in COMPARED])
    ax.set_ylim(0, 1.05)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("holdout metrics")
    return fig


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def evaluation_figures(client, training_run_id: str, metrics: dict[str, dict]) -> tuple[dict, str]:
    """The figures of an evaluation by artifact name, and markdown that shows them inline (PNG data URIs, about
    15 KB each). A training run that logged no loss gets no loss curve, and the markdown says so."""
    figures = {"metric_comparison.png": metric_comparison(metrics)}
    history = loss_history(client, training_run_id)
    if history:
        figures["loss_curve.png"] = loss_curve(history)
    md = [f"![{name}]({png_data_uri(fig)})" for name, fig in sorted(figures.items())]
    if not history:
        md.append(f"_training run {training_run_id} logged no loss, so there is no loss curve_")
    return figures, "\n\n".join(md)
