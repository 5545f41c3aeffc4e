"""Metrics logging: metrics.jsonl (round trip, non-finite values, crash-safe resume), TensorBoard events,
W&B wiring, MFU from XLA's cost analysis, and the reward plot."""

from __future__ import annotations

import io
import json
import math
import struct
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.crc32c import crc32c
from tensorboardX.proto.event_pb2 import Event

from rlvr_jax.monitoring import (
    MetricsWriter,
    PhaseTimer,
    flatten_metrics,
    mfu,
    peak_flops,
    plot_rewards,
    read_metrics,
    step_flops,
    truncate_after,
)


def read_events(logdir: Path) -> list[Event]:
    """A minimal TFRecord reader (no tensorboard install needed) that also checks both CRCs."""

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    events = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            body = data[pos + 12 : pos + 12 + length]
            (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
            assert masked(header) == length_crc and masked(body) == body_crc
            events.append(Event.FromString(body))
            pos += 16 + length
    return events


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(logdir):
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def fake_metrics(step: int) -> dict:
    return {
        "reward": {"mean": jnp.float32(0.1 * step), "std": np.float64(0.05), "math": 0.25 * step},
        "accuracy": step / 10,
        "tokens": step * 1000,
        "truncated": np.array([True, False]).mean() > 0.4,
        "ratio": jnp.array([0.9, 1.1]),
        "eval/accuracy": None if step % 2 else 0.5,
    }


def test_jsonl_round_trip(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, run_id="run-a", tensorboard=False) as writer:
        for step in (1, 2):
            writer.write(step, fake_metrics(step))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and {r["run_id"] for r in rows} == {"run-a"}
    row = rows[1]
    assert row["reward/mean"] == pytest.approx(0.2) and row["reward/math"] == 0.5
    assert row["tokens"] == 2000 and isinstance(row["tokens"], int)
    assert (
        row["truncated"] == 1
        and row["ratio/0"] == pytest.approx(0.9)
        and row["ratio/1"] == pytest.approx(1.1)
    )
    assert row["eval/accuracy"] == 0.5 and math.isnan(rows[0]["eval/accuracy"])
    assert isinstance(row["time"], float)


def test_non_finite_values_are_strict_json_nulls(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, run_id="r") as writer:
        writer.write(1, {"loss": float("nan"), "grad_norm": jnp.inf, "kl": -np.inf, "ok": 1.5})
    line = (tmp_path / "metrics.jsonl").read_text()
    record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert record["loss"] is None and record["grad_norm"] is None and record["kl"] is None
    row = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert math.isnan(row["loss"]) and row["ok"] == 1.5
    logged = scalars(tmp_path / "tensorboard" / tmp_path.name)  # TensorBoard keeps the real values
    assert math.isnan(logged["loss"][0][1]) and logged["grad_norm"][0][1] == math.inf


def test_bad_metrics_are_rejected(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match="reserved"):
            writer.write(1, {"step": 3})
        with pytest.raises(TypeError, match="'name'"):
            writer.write(1, {"name": "abc"})
    assert flatten_metrics({"a": {"b": {"c": 1}}, "e": np.zeros(0)}) == {"a/b/c": 1}


def test_tensorboard_events_are_written_and_readable(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path / "lr-1e-3", config={"lr": 1e-3}) as writer:
        for step in range(1, 4):
            writer.write(step, fake_metrics(step))
    # In a folder named after the run: TensorBoard lists the run as "lr-1e-3", not ".".
    assert writer.tensorboard_dir == tmp_path / "lr-1e-3" / "tensorboard" / "lr-1e-3"
    logged = scalars(writer.tensorboard_dir)
    assert [s for s, _ in logged["reward/mean"]] == [1, 2, 3]
    assert logged["reward/mean"][2][1] == pytest.approx(0.3)
    assert [s for s, _ in logged["eval/accuracy"]] == [2]  # None: not logged that step
    assert "ratio/1" in logged and "tokens" in logged


def test_resume_writes_every_step_exactly_once(tmp_path: Path) -> None:
    def run(workdir: Path, steps: range, resume_step: int | None = None) -> None:
        with MetricsWriter(workdir, run_id="r", resume_step=resume_step) as writer:
            for step in steps:
                writer.write(step, fake_metrics(step))

    run(tmp_path / "straight", range(1, 8))
    # Killed after step 5 (checkpoint at 3) in the middle of writing step 6's line.
    run(tmp_path / "resumed", range(1, 6))
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "time": 1.0, "rew')
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [1, 2, 3, 4, 5]  # cut line ignored
    run(tmp_path / "resumed", range(4, 8), resume_step=3)

    def without_time(workdir: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(workdir)]

    straight, resumed = without_time(tmp_path / "straight"), without_time(tmp_path / "resumed")
    assert json.dumps(resumed) == json.dumps(straight)
    events = read_events(tmp_path / "resumed" / "tensorboard" / "resumed")
    purges = [e for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert [e.step for e in purges] == [4]  # TensorBoard drops the earlier run's steps >= 4


def test_truncate_after(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert truncate_after(path, 3) == 0  # no file yet
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(1, 6)) + '{"step": 6')
    assert truncate_after(path, 2) == 3
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert path.read_text().endswith("\n") and not (tmp_path / "metrics.jsonl.tmp").exists()
    assert truncate_after(path, 10) == 0


def test_only_the_primary_process_writes(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path / "other", primary=False) as writer:
        assert writer.write(1, {"x": 1.0}) == {"x": 1.0}
    assert not (tmp_path / "other").exists()


def test_wandb_is_optional_and_wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsWriter(tmp_path, wandb_project="p")

    calls: list[tuple] = []

    class FakeRun:
        def log(self, row: dict, step: int) -> None:
            calls.append(("log", step, row))

        def finish(self) -> None:
            calls.append(("finish",))

    def init(**kwargs: object) -> FakeRun:
        calls.append(("init", kwargs))
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with MetricsWriter(tmp_path, tensorboard=False, wandb_project="p", run_id="r7", config={"a": 1}) as w:
        w.write(3, {"x": 2.0, "y": None})
    assert calls[0] == (
        "init",
        {"project": "p", "id": "r7", "resume": "allow", "dir": str(tmp_path), "config": {"a": 1},
         "name": None, "group": None, "tags": None},
    )  # fmt: skip
    assert calls[1] == ("log", 3, {"x": 2.0}) and calls[2] == ("finish",)


class FakeWandb:
    """The wandb module as far as the sinks use it (wandb is not installed here, and W&B cannot be
    reached): init's arguments, and what each log call held, Tables and Images included."""

    class Table:
        def __init__(self, columns: list, data: list) -> None:
            self.columns, self.data = columns, data

    class Image:
        def __init__(self, path: str, caption: str | None = None) -> None:
            self.path, self.caption = path, caption

    def __init__(self) -> None:
        self.inits: list[dict] = []
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    def init(self, **kwargs: object) -> FakeWandb:
        self.inits.append(kwargs)
        return self

    def log(self, row: dict, step: int) -> None:
        self.logged.append((step, row))

    def finish(self) -> None:
        self.finished = True


SAMPLES = [
    {"id": "a", "sample_index": 0, "prompt": "What is 2+2?", "completion": "4 | four\nThe answer is 4.",
     "reward": 1.0, "reason": "correct (4)"},
    {"id": "a", "sample_index": 1, "prompt": "What is 2+2?", "completion": "5", "reward": 0.0,
     "reason": "wrong"},
    {"id": "b", "sample_index": 0, "prompt": "What is 3+3?", "completion": "x" * 5000, "reward": 0.0,
     "reason": "no answer"},
    {"id": "c", "sample_index": 0, "prompt": "What is 4+4?", "completion": "8", "reward": 1.0,
     "reason": "correct (8)"},
]  # fmt: skip


def _figure(path: Path, color: tuple[int, int, int]) -> Path:
    from PIL import Image

    pixels = np.zeros((12, 20, 3), np.uint8)
    pixels[:, :10] = color
    Image.fromarray(pixels).save(path)
    return path


def test_samples_and_figures_go_to_wandb_as_tables_and_images(tmp_path: Path, monkeypatch) -> None:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    figure = _figure(tmp_path / "accuracy.png", (255, 0, 0))
    with MetricsWriter(tmp_path, tensorboard=False, wandb_project="p", run_id="r1", wandb_name="gsm8k-lr1e-6",
                       wandb_group="sweep-3", wandb_tags=("grpo", "gsm8k")) as writer:  # fmt: skip
        writer.write_samples(0, "eval/samples", SAMPLES, limit=2)
        writer.write_figures(5, {"eval/compare/accuracy": figure})
    assert fake.inits[0]["name"] == "gsm8k-lr1e-6" and fake.inits[0]["group"] == "sweep-3"
    assert fake.inits[0]["tags"] == ["grpo", "gsm8k"]
    (step, row), (figure_step, figures) = fake.logged
    table = row["eval/samples"]
    assert step == 0 and table.columns == ["prompt", "completion", "reward", "reason"]
    # The first two items, first sample of each (item a's sample 1 is not a new item); long text clipped.
    assert [r[0] for r in table.data] == ["What is 2+2?", "What is 3+3?"]
    assert table.data[0][2:] == [1.0, "correct (4)"] and table.data[0][1] == SAMPLES[0]["completion"]
    assert len(table.data[1][1]) == 2000 and table.data[1][1].endswith("...")
    image = figures["eval/compare/accuracy"]
    assert figure_step == 5 and image.path == str(figure) and image.caption == "accuracy.png"
    assert fake.finished


def test_samples_and_figures_go_to_tensorboard_text_and_images(tmp_path: Path) -> None:
    from PIL import Image

    from rlvr_jax.monitoring.media import figure_tags

    compare = tmp_path / "compare"
    compare.mkdir()
    _figure(compare / "accuracy.png", (255, 0, 0))
    _figure(compare / "lengths.png", (0, 0, 255))
    (compare / "report.md").write_text("not a figure")
    with MetricsWriter(tmp_path / "run", run_id="r") as writer:
        writer.write_samples(0, "eval/samples", SAMPLES, limit=8)
        writer.write_samples(4, "eval/samples", SAMPLES[:1], limit=8)
        writer.write_samples(5, "eval/samples", SAMPLES, limit=0)  # logging.log_samples = 0: nothing
        writer.write_figures(4, figure_tags(compare, "eval/compare"))
    texts, images = {}, {}
    for event in read_events(tmp_path / "run" / "tensorboard"):
        for value in event.summary.value:
            if value.HasField("tensor"):
                texts[(value.tag, event.step)] = value.tensor.string_val[0].decode()
            if value.HasField("image"):
                images[(value.tag, event.step)] = value.image
    assert sorted(texts) == [("eval/samples/text_summary", 0), ("eval/samples/text_summary", 4)]
    table = texts[("eval/samples/text_summary", 0)].splitlines()
    assert table[0] == "| prompt | completion | reward | reason |" and len(table) == 2 + 3  # items a, b, c
    # A pipe in a completion stays inside its cell and a line break becomes <br>: one row per sample.
    assert table[2] == "| What is 2+2? | 4 \\| four<br>The answer is 4. | 1 | correct (4) |"
    assert table[4] == "| What is 4+4? | 8 | 1 | correct (8) |"
    assert sorted(images) == [("eval/compare/accuracy", 4), ("eval/compare/lengths", 4)]
    for (tag, _), image in images.items():
        source = compare / f"{tag.rsplit('/', 1)[1]}.png"
        decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, np.asarray(Image.open(source).convert("RGB")))
        assert (image.height, image.width) == (12, 20)


def test_media_helpers_on_edge_cases(tmp_path: Path) -> None:
    from rlvr_jax.monitoring.media import figure_tags, markdown_table, sample_table

    assert figure_tags(tmp_path / "missing", "x") == {}
    assert sample_table([{"prompt": "p"}], 3) == [["p", "", "", ""]]  # a row without the other fields
    assert sample_table(SAMPLES, -1) == []
    assert markdown_table(["a", "b"], [[0.123456, "x\\y\r\n"]]).splitlines()[2] == "| 0.1235 | x\\\\y<br> |"


def test_phase_timer() -> None:
    timer = PhaseTimer()
    for name in ("rollout", "reward", "train", "train"):
        with timer.phase(name):
            pass
    out = timer.metrics(tokens={"rollout": 100, "train": 50})
    assert set(out) == {
        "time/rollout",
        "time/reward",
        "time/train",
        "time/step",
        "tokens_per_s/rollout",
        "tokens_per_s/train",
    }
    assert out["time/step"] == pytest.approx(out["time/rollout"] + out["time/reward"] + out["time/train"])


def test_mfu_arithmetic_and_peak_table() -> None:
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12 and peak_flops("NVIDIA L4") == 121e12
    assert peak_flops("NVIDIA L40S") is None
    assert peak_flops("TPU v5 lite") == 197e12 and peak_flops("TPU v5p") == 459e12
    assert peak_flops("TPU v6 lite") == 918e12 and peak_flops("cpu") is None
    assert peak_flops() is None  # this test runs on a CPU
    assert mfu(989e12 * 0.3, 2.0, "NVIDIA H100 80GB HBM3") == pytest.approx(0.15)
    assert mfu(1e12, 1.0, "cpu") is None and mfu(None, 1.0, "TPU v5p") is None
    assert mfu(1e12, 0.0, "TPU v5p") is None
    assert mfu(2e9, 0.5, "cpu", peak=8e9) == pytest.approx(0.5)


def test_step_flops_from_cost_analysis() -> None:
    m, k, n = 128, 64, 32
    matmul = jax.jit(lambda a, b: a @ b)
    lowered = matmul.lower(jnp.ones((m, k)), jnp.ones((k, n)))
    assert step_flops(lowered.compile()) == pytest.approx(2 * m * n * k, rel=0.05)

    class OldJax:  # jax < 0.4.30 returned a list with one dict
        def cost_analysis(self) -> list[dict]:
            return [{"flops": 10.0}]

    assert step_flops(OldJax()) == 10.0


def test_plot_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reward curve's panels: reward (smoothed, with its band), held-out accuracy, lengths; not the
    batch accuracy, which for a 0/1 reward repeats the reward."""
    from rlvr_jax import figures

    rng = np.random.default_rng(0)
    with MetricsWriter(tmp_path / "run", tensorboard=False) as writer:
        for step in range(1, 31):
            scores = (rng.random((4, 6)) < 1 - math.exp(-step / 10)).astype(float)  # 4 prompts x 6, 0/1
            stderr = scores.mean(axis=1).std(ddof=1) / 2  # over the 4 prompts' means
            row = {
                "reward": {"mean": scores.mean(), "std": scores.std(), "stderr": stderr,
                           "min": scores.min(), "max": scores.max()},
                "accuracy": scores.mean(),
                "response": {"length_mean": 40 - step, "truncation_rate": max(0.0, 0.5 - step / 30)},
            }  # fmt: skip
            if step % 10 == 0:
                row["eval/accuracy"] = 0.4 + step / 100  # an eval every 10 steps: sparse points
            writer.write(step, row)
    drawn = []
    save = figures.save
    monkeypatch.setattr(figures, "save", lambda fig, out, **kw: drawn.append(fig) or save(fig, out, **kw))
    out = plot_rewards(tmp_path / "run" / "metrics.jsonl", tmp_path / "plots" / "rewards.png")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    titles = [ax.get_title(loc="left") for ax in drawn[0].axes if ax.get_title(loc="left")]
    assert titles == [
        "Training reward (reward/mean)",
        "Held-out accuracy (95% interval)",
        "Completions: mean length and share truncated",
    ]
    with pytest.raises(ValueError, match="no metrics"):
        (tmp_path / "empty.jsonl").write_text("")
        plot_rewards(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_the_reward_band_is_a_standard_error_clipped_to_the_reward_range() -> None:
    """A 0/1 reward near 1 with a wide standard error: the band stops at 1 (the highest reward logged);
    without a known range it would not. One step's band is its standard error; later ones shrink as the
    smoothed mean averages more steps."""
    from rlvr_jax.monitoring.metrics import reward_band

    rows = [
        {"step": s, "reward/mean": 0.9, "reward/stderr": 0.2, "reward/min": 0.0, "reward/max": 1.0}
        for s in range(1, 6)
    ]
    steps, smoothed, low, high = reward_band(rows, 0.6)
    assert list(steps) == [1, 2, 3, 4, 5] and smoothed == pytest.approx([0.9] * 5)
    assert high.max() == 1.0 and low[0] == pytest.approx(0.7) and np.all(np.diff(low) > 0)
    unbounded = [{k: v for k, v in r.items() if k not in ("reward/min", "reward/max")} for r in rows]
    assert reward_band(unbounded, 0.6)[3][0] == pytest.approx(1.1)
    assert reward_band(unbounded, 0.6, reward_range=(0.0, 1.0))[3].max() == 1.0
    no_error = [{k: v for k, v in r.items() if k != "reward/stderr"} for r in rows]
    assert np.isnan(reward_band(no_error, 0.6)[2]).all()  # no standard error logged: no band
