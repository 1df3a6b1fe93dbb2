import itertools
import json
from pathlib import Path

import pytest
import torch

from donut_hole.compression.batches import StepSampler, collate, target_sequence
from donut_hole.compression.checkpoint import CheckpointError
from donut_hole.compression.recipe import TrainConfig
from donut_hole.compression.train import get_lr, train
from donut_hole.documents.synth import generate
from donut_hole.evaluation.dataset import read_dataset
from donut_hole.model.build import load_model, new_model


def test_get_lr_warmup_then_cosine():
    kw = {"lr": 1.0, "warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1}
    assert get_lr(0, **kw) == pytest.approx(0.1)
    assert get_lr(9, **kw) == pytest.approx(1.0)
    assert get_lr(10, **kw) == pytest.approx(1.0)
    assert get_lr(60, **kw) == pytest.approx(0.55)  # half way down the cosine: 0.1 + 0.9 * 0.5
    assert get_lr(110, **kw) == pytest.approx(0.1)
    assert get_lr(500, **kw) == pytest.approx(0.1)
    lrs = [get_lr(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_get_lr_warmup_stable_decay():
    kw = {"lr": 1.0, "warmup_steps": 10, "total_steps": 1000, "min_lr_ratio": 0.1, "decay_steps": 100}
    assert get_lr(5, **kw) == pytest.approx(0.6)  # the warm-up is as before
    assert [get_lr(s, **kw) for s in (10, 500, 900)] == pytest.approx([1.0, 1.0, 1.0])  # stable
    assert get_lr(950, **kw) == pytest.approx(0.55)  # half way down its own cosine
    assert get_lr(1000, **kw) == pytest.approx(0.1)
    lrs = [get_lr(s, **kw) for s in range(900, 1001)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    # a decay longer than the run after its warm-up is the plain cosine
    assert get_lr(505, **(kw | {"decay_steps": 5000})) == get_lr(505, **(kw | {"decay_steps": None}))


def test_step_sampler_depends_only_on_seed_and_step():
    full = list(StepSampler(10, batch_size=3, seed=1, start=0, stop=8))
    resumed = list(StepSampler(10, batch_size=3, seed=1, start=5, stop=8))
    assert full[5:] == resumed
    assert all(len(b) == 3 for b in full)
    assert sorted(full[0] + full[1] + full[2]) == sorted(
        set(full[0] + full[1] + full[2])
    )  # no repeat in an epoch
    assert len(next(iter(StepSampler(2, batch_size=4, seed=0, start=0, stop=1)))) == 4


def test_target_sequence_and_collate():
    assert target_sequence({"a": "1"}, task_token="<s_x>", eos_token="</s>") == "<s_x><s_a>1</s_a></s>"
    batch = collate(
        [(torch.zeros(3, 2, 2), torch.tensor([5, 6, 7])), (torch.ones(3, 2, 2), torch.tensor([5]))],
        pad_token_id=0,
    )
    assert batch["pixel_values"].shape == (2, 3, 2, 2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    generate("shipping_label", n=4, out=root / "train", seed=0, progress=False)
    return root / "train"


def _fresh(data: Path):
    docs = [s.gt_parse for s in read_dataset(data)]
    return new_model("tiny", documents=docs, image_size=(160, 160), seed=0)


def test_resume_continues_exactly_where_it_stopped(tmp_path, data):
    samples = read_dataset(data)
    config = TrainConfig(
        steps=4,
        batch_size=2,
        warmup_steps=1,
        eval_every=100,
        checkpoint_every=2,
        eval_samples=1,
        max_new_tokens=4,
    )
    model, processor = _fresh(data)
    train(
        model,
        processor,
        train_samples=samples,
        val_samples=[],
        config=config,
        out_dir=tmp_path / "a",
        progress=False,
    )

    model, processor = _fresh(data)
    half = config.model_copy(update={"steps": 2})
    train(
        model,
        processor,
        train_samples=samples,
        val_samples=[],
        config=half,
        out_dir=tmp_path / "b",
        progress=False,
    )
    model, processor = _fresh(data)  # a new process would start from scratch and load the checkpoint
    train(
        model,
        processor,
        train_samples=samples,
        val_samples=[],
        config=config,
        out_dir=tmp_path / "b",
        resume=True,
        progress=False,
    )

    straight, _ = load_model(tmp_path / "a" / "model")
    resumed, _ = load_model(tmp_path / "b" / "model")
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 4


def test_training_lowers_the_loss_and_records_history(tmp_path, data):
    samples = read_dataset(data)[:2]
    config = TrainConfig(
        steps=24,
        batch_size=2,
        lr=1e-3,
        warmup_steps=2,
        eval_every=12,
        checkpoint_every=100,
        eval_samples=1,
        max_new_tokens=4,
        log_every=4,
    )
    model, processor = _fresh(data)
    history = train(
        model,
        processor,
        train_samples=samples,
        val_samples=samples,
        config=config,
        out_dir=tmp_path,
        progress=False,
    )
    assert [h["step"] for h in history] == [12, 24]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"f1", "ted_accuracy"} <= set(history[-1])
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [12, 24]
    assert (tmp_path / "model" / "config.json").is_file()


def test_interrupted_run_checkpoints_the_steps_it_finished(tmp_path, data):
    """Ctrl-C / SIGTERM mid-run: the checkpoint holds every finished step and --resume goes on from it."""
    samples = read_dataset(data)
    config = TrainConfig(
        steps=6, batch_size=2, warmup_steps=1, eval_every=3, checkpoint_every=100, eval_samples=1
    )
    model, processor = _fresh(data)

    def stop(step: int) -> dict:
        raise KeyboardInterrupt  # arrives at the evaluation before step 3, after steps 0-2 finished

    with pytest.raises(KeyboardInterrupt):
        train(
            model,
            processor,
            train_samples=samples,
            val_samples=[],
            config=config,
            out_dir=tmp_path,
            on_eval=stop,
            progress=False,
        )
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 3
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0] and {"loss", "lr", "img_s", "ce"} <= set(log[0])

    other, other_processor = new_model(
        "tiny", documents=[{"document_type": "x", "zz": "1"}], image_size=(160, 160)
    )
    with pytest.raises(CheckpointError, match="another tokenizer"):  # its ids would mean other tokens
        train(
            other,
            other_processor,
            train_samples=samples,
            val_samples=[],
            config=config,
            out_dir=tmp_path,
            resume=True,
        )

    model, processor = _fresh(data)
    fast = config.model_copy(update={"max_new_tokens": 2})
    train(
        model,
        processor,
        train_samples=samples,
        val_samples=[],
        config=fast,
        out_dir=tmp_path,
        resume=True,
        progress=False,
    )
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 6
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_time_limit_stops_early_and_saves_like_the_last_step(tmp_path, data):
    """A fixed budget of machine time: stop, evaluate, checkpoint and save; --resume goes on later."""
    config = TrainConfig(
        steps=50, batch_size=2, warmup_steps=1, eval_samples=1, max_new_tokens=2, time_limit_s=1e-6
    )
    model, processor = _fresh(data)
    history = train(
        model,
        processor,
        train_samples=read_dataset(data),
        val_samples=read_dataset(data),
        config=config,
        out_dir=tmp_path,
        progress=False,
    )
    assert [record["step"] for record in history] == [1]  # one step, then the limit
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 1
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_run_ends_as_the_mean_of_its_last_checkpoints_across_an_interruption(tmp_path, data):
    """train.average_last: the weights at the checkpoints in the schedule's last half (steps 4 and 6),
    kept in the checkpoint across a stop, averaged at the end and evaluated beside the last step's."""
    samples = read_dataset(data)
    base = dict(steps=6, batch_size=2, warmup_steps=1, checkpoint_every=2, eval_samples=1, max_new_tokens=2)
    config = TrainConfig(**base, eval_every=5, average_last=0.5)

    def stop(step: int) -> dict:
        raise KeyboardInterrupt  # at the evaluation before step 5, after the checkpoint of step 4

    def run(config: TrainConfig, out: str, **options) -> tuple:  # a fresh process's model, trained in out
        model, processor = _fresh(data)
        history = train(
            model,
            processor,
            train_samples=samples,
            config=config,
            out_dir=tmp_path / out,
            progress=False,
            **{"val_samples": [], **options},
        )
        return model, history

    with pytest.raises(KeyboardInterrupt):
        run(config, "a", on_eval=stop)
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["average"]["steps"] == [4]
    _, history = run(config, "a", val_samples=samples, resume=True)
    assert [(h["step"], h.get("average_of")) for h in history] == [(6, None), (6, [4, 6])]
    assert {"f1", "ted_accuracy"} <= set(history[-1])

    plain = TrainConfig(**base, eval_every=4)  # the same run without averaging: its weights at 4 and 6
    with pytest.raises(KeyboardInterrupt):
        run(plain, "b", on_eval=stop)
    weights = [torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]]
    weights.append(run(plain, "b", resume=True)[0].state_dict())
    averaged = load_model(tmp_path / "a" / "model")[0].state_dict()
    for name, value in averaged.items():
        if value.is_floating_point():
            assert torch.allclose(value, (weights[0][name] + weights[1][name]) / 2, atol=1e-6), name
    assert not torch.allclose(averaged["decoder.lm_head.weight"], weights[1]["decoder.lm_head.weight"])


def test_dataset_pixels_match_the_processor_on_scans_at_the_model_size(tmp_path):
    """Training reads the processor's pixel values, through the fast path, to the bit."""
    from PIL import Image

    from donut_hole.compression.batches import DonutDataset
    from donut_hole.model.pixels import DonutPixels

    scans = generate(
        ["bill_of_lading"], n=2, out=tmp_path / "scans", seed=4, image_size=(448, 448), progress=False
    )
    samples = read_dataset(scans)
    _, processor = new_model("tiny", documents=[s.gt_parse for s in samples], image_size=(448, 448))
    dataset = DonutDataset(samples, processor, task_token="<s_x>", max_length=64)
    reference = processor.image_processor
    assert isinstance(dataset._pixels, DonutPixels)
    for sample in samples:
        image = Image.open(sample.image_path).convert("RGB")
        assert image.size == (448, 448)
        expected = reference(image, return_tensors="pt")["pixel_values"][0]
        assert torch.equal(dataset.pixels(image), expected)
        other = image.resize((200, 120))  # not the model's size: the processor's thumbnail and padding
        assert torch.equal(dataset.pixels(other), reference(other, return_tensors="pt")["pixel_values"][0])
    pixels, ids = dataset[0]
    assert pixels.shape == (3, 448, 448) and ids.dtype == torch.long


def test_reached_target_only_at_the_step_just_evaluated():
    from donut_hole.compression.monitor import reached_target

    history = [{"step": 4, "f1": 0.99}]
    assert reached_target(history, step=4, target_f1=0.95)
    assert not reached_target(history, step=5, target_f1=0.95)  # an old evaluation does not stop a run
    assert not reached_target(history, step=4, target_f1=None)
    assert not reached_target([{"step": 4, "f1": 0.5}], step=4, target_f1=0.95)
    assert not reached_target([], step=0, target_f1=0.95)
