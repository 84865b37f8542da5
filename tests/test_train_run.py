"""The training loop end to end on shards of real motion: overfit, exact resume, bad inputs, Ray."""
import json

import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, load_for_inference
from training.data import FeatureWidthError
from training.diffusion import generate
from training.model import ModelConfig, MotionDenoiser
from training.normalize import StatsError
from training.run import lr_factor, main, run_from_args, validation_steps
from tests.motion_fixtures import fixture_clips, write_dataset

TINY = ["model.audio_dim=16", "model.width=64", "model.layers=2", "model.heads=4", "model.w_pre=5",
        "model.w_cur=20", "train.threads=1", "train.progress=false", "data.batch_size=8"]


@pytest.fixture(scope="module")
def shards(media, tmp_path_factory):
    """Three template clips for training and the same three as the validation split."""
    root = tmp_path_factory.mktemp("train_run")
    clips = fixture_clips(media, n_clips=3)
    val = fixture_clips(media, n_clips=3, split="val")
    for clip in val:
        clip["key"] = clip["key"].replace("train", "val")
    write_dataset(root, clips + val, clips_per_shard=3)
    return root


def run(shards, out, *overrides, resume=False, ray_workers=None):
    argv = ["--shards", str(shards), "--out", str(out)] + (["--resume"] if resume else [])
    argv += ["--num-workers", str(ray_workers)] if ray_workers else []
    return run_from_args(argv + TINY + list(overrides))


@pytest.mark.slow
def test_overfits_a_few_real_clips(shards, tmp_path):
    summary = run(shards, tmp_path / "run", "train.max_steps=300", "train.val_every=300",
                  "optim.lr=3e-3", "optim.warmup_steps=10", "model.dropout=0.0", "data.batch_size=16",
                  "data.num_workers=0", "data.truncate_prob=0.0", "train.ckpt_every=1000")
    (step0, val0, _), (step_end, val_end, val_ema) = summary["val_history"][0], summary["val_history"][-1]
    assert (step0, step_end) == (0, 300)
    assert val_end < 0.2 * val0, summary["val_history"]
    assert val_ema < 0.3 * val0
    # the trained model is loadable for inference and generates finite motion of the right length
    model, diffusion, stats, cfg = load_for_inference(tmp_path / "run" / "checkpoint.pt")
    assert cfg.train.max_steps == 300 and stats["vector"]["dim"] == 70
    motion = generate(model, diffusion, torch.zeros(47, 16), n_steps=5, sampler="ddim")
    assert motion.shape == (47, 70) and torch.isfinite(motion).all()


def test_resume_continues_exactly_like_a_straight_run(shards, tmp_path):
    common = ["train.ckpt_every=10", "train.val_every=5", "train.log_every=5", "optim.decay_steps=20",
              "optim.warmup_steps=3", "optim.ema_update_after=2", "data.num_workers=2"]
    straight = run(shards, tmp_path / "straight", "train.max_steps=20", *common)
    run(shards, tmp_path / "split", "train.max_steps=10", *common)
    first_half = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert first_half["step"] == 10
    resumed = run(shards, tmp_path / "split", "train.max_steps=20", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert a["step"] == b["step"] == 20 and resumed["steps_run"] == 10
    # tolerance: atol 1e-6 on every weight, EMA weight and optimiser moment (CPU, same op order)
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.allclose(tensor.float(), b[key][name].float(), atol=1e-6, rtol=0), (key, name)
    for pid, moments in a["optimizer"]["state"].items():
        for name, tensor in moments.items():
            assert torch.allclose(tensor.float(), b["optimizer"]["state"][pid][name].float(), atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 20
    # both runs' streams stand at the same place: the resumed one continued from its recorded
    # positions (one per loader worker) without replaying the first 10 batches
    assert a["data_state"]["positions"] == b["data_state"]["positions"]
    assert first_half["data_state"]["positions"] != b["data_state"]["positions"]
    for (step_a, loss_a), (step_b, loss_b) in zip(straight["loss_history"][-2:], resumed["loss_history"]):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, abs=1e-6)
    assert list(straight["val_history"][-1]) == pytest.approx(list(resumed["val_history"][-1]), abs=1e-6)
    # and the weights really moved: compare with a fresh model of the same seed
    torch.manual_seed(0)
    fresh = MotionDenoiser(ModelConfig.from_dict(a["model_config"])).state_dict()
    layer = "decoder.layers.0.linear1.weight"
    assert not torch.allclose(fresh[layer], a["model"][layer])
    # a resumed run refuses another model
    with pytest.raises(CheckpointError, match="model config"):
        run(shards, tmp_path / "split", "train.max_steps=30", "model.layers=3", resume=True)
    # ... or another pose normalisation (the checkpoint's stats would be read another way)
    with pytest.raises(CheckpointError, match="pose_norm"):
        run(shards, tmp_path / "split", "train.max_steps=30", "data.pose_norm=minmax", resume=True)


def test_a_corrupt_shard_is_skipped_and_counted_during_training(shards, tmp_path):
    root = tmp_path / "with_bad"
    (root / "shards").mkdir(parents=True)
    for path in (shards / "shards").glob("*.tar"):
        (root / "shards" / path.name).write_bytes(path.read_bytes())
        (root / "shards" / f"trunc-{path.name}").write_bytes(path.read_bytes()[:40_000])
    (root / "shards" / "garbage.tar").write_bytes(b"\x00\xffnot a tar" * 5000)
    (root / "stats.json").write_text((shards / "stats.json").read_text())
    summary = run(root, tmp_path / "run", "train.max_steps=8", "train.val_every=4", "train.ckpt_every=8",
                  "data.num_workers=0")
    assert summary["step"] == 8
    assert summary["skipped_errors"] > 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_errors"] > 0


def test_bad_inputs_fail_before_the_first_step(shards, tmp_path):
    no_stats = tmp_path / "no_stats"
    (no_stats / "shards").mkdir(parents=True)
    for path in (shards / "shards").glob("*.tar"):
        (no_stats / "shards" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(StatsError, match="stats.json"):
        run(no_stats, tmp_path / "a", "train.max_steps=2")
    with pytest.raises(FeatureWidthError, match="16-wide"):
        run(shards, tmp_path / "b", "train.max_steps=2", "model.audio_dim=32")
    stats = json.loads((shards / "stats.json").read_text())
    stats.pop("audio_feat")  # stats that cannot catch it: the first clip still does
    (no_stats / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(FeatureWidthError, match="width 32"):
        run(no_stats, tmp_path / "c", "train.max_steps=2", "model.audio_dim=32")
    for name in "abc":
        assert not (tmp_path / name / "checkpoint.pt").exists()
    with pytest.raises(CheckpointError, match="no checkpoint.pt"):
        run(shards, tmp_path / "d", resume=True)
    # the command line turns these into one line on stderr and exit status 2
    assert main(["--shards", str(no_stats), "--out", str(tmp_path / "e")] + TINY
                + ["model.audio_dim=32"]) == 2


def test_load_for_inference_rejects_incomplete_or_mismatched_checkpoints(shards, tmp_path):
    run(shards, tmp_path / "run", "train.max_steps=2", "train.val_every=2", "data.num_workers=0")
    path = tmp_path / "run" / "checkpoint.pt"
    model, diffusion, _, _ = load_for_inference(path, use_ema=False)
    assert not model.training and model.cfg.width == 64
    # a checkpoint written when the removed research options existed, with them off, loads and resumes
    state = torch.load(path, weights_only=False)
    state["model_config"].update(input_skip=False, input_skip_sigma=0.0)
    state["train_config"]["model"].update(input_skip=False, input_skip_sigma=0.0)
    state["train_config"]["diffusion"].update(shift=1.0, parametrization="x0", sigma_data=1.0)
    torch.save(state, path)
    older, older_diffusion, _, _ = load_for_inference(path, use_ema=False)
    assert torch.equal(older_diffusion.alphas_cumprod, diffusion.alphas_cumprod)
    assert all(torch.equal(a, b) for a, b in zip(older.state_dict().values(), model.state_dict().values()))
    assert run(shards, tmp_path / "run", "train.max_steps=3", "train.val_every=2", "data.num_workers=0",
               resume=True)["step"] == 3
    state["model_config"]["input_skip"] = True  # a model this code cannot compute
    torch.save(state, tmp_path / "skip.pt")
    with pytest.raises(CheckpointError, match="input_skip"):
        load_for_inference(tmp_path / "skip.pt")
    state["model_config"]["input_skip"] = False
    state["model_config"]["width"] = 128
    torch.save(state, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_for_inference(tmp_path / "wide.pt")
    del state["ema"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_for_inference(tmp_path / "partial.pt")


def test_learning_rate_warms_up_then_decays():
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(120)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.55)
    assert factors[100] == factors[119] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


@pytest.mark.slow
def test_ray_train_two_workers_end_identical(shards, tmp_path):
    ray = pytest.importorskip("ray")
    try:
        summary = run(shards, tmp_path / "ray", "train.max_steps=6", "train.val_every=3",
                      "train.ckpt_every=3", "data.num_workers=0", "data.batch_size=4", ray_workers=2)
    finally:
        ray.shutdown()
    assert summary["world_size"] == 2 and summary["step"] == 6
    digests = summary["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] and summary["replicas_identical"]
    assert [w["rank"] for w in summary["workers"]] == [0, 1]  # what each worker got
    assert all(w["device"] == "cpu" for w in summary["workers"])
    state = load_checkpoint(tmp_path / "ray" / "checkpoint.pt")
    assert state["step"] == 6 and len(state["rng"]) == 2  # every rank's generators are saved
    assert len(state["data_state"]["positions"]) == 2  # and every rank's stream positions
    assert not torch.equal(state["rng"][0]["noise"], state["rng"][1]["noise"])
    torch.manual_seed(0)
    fresh = MotionDenoiser(ModelConfig.from_dict(state["model_config"])).state_dict()
    assert not torch.allclose(fresh["out.weight"], state["model"]["out.weight"])


def test_optimiser_is_the_papers_adam_or_adamw():
    from configs import load_config
    from training.run import make_optimizer

    model = MotionDenoiser(ModelConfig(audio_dim=16, width=32, layers=1, heads=2, w_pre=5, w_cur=10))
    adam = make_optimizer(model, load_config("train", ["optim.name=adam"]))
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0
    assert adam.defaults["lr"] == 1e-4
    adamw = make_optimizer(model, load_config("train", ["optim.name=adamw"]))
    assert type(adamw) is torch.optim.AdamW
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
    assert adamw.defaults.get("fused")  # auto: torch's fused kernels, on CPU too
    with pytest.raises(ValueError, match="optim.name"):
        make_optimizer(model, load_config("train", ["optim.name=sgd"]))


def test_fused_optimiser_makes_the_loops_update():
    """optim.fused (the CPU default) changes how AdamW runs, not what it computes."""
    from configs import load_config
    from training.run import make_optimizer

    cfg = ModelConfig(audio_dim=16, width=32, layers=1, heads=2, w_pre=5, w_cur=10)
    results = []
    for fused in ("true", "false"):
        torch.manual_seed(0)
        model = MotionDenoiser(cfg)
        optimizer = make_optimizer(model, load_config("train", [f"optim.fused={fused}", "optim.lr=1e-2"]))
        assert bool(optimizer.defaults.get("fused")) == (fused == "true")
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(results[0], torch.cat([p.detach().flatten() for p in MotionDenoiser(cfg).parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_cpu_autocast_follows_the_cpu(monkeypatch):
    """train.cpu_autocast auto: bf16 autocast where the CPU has AMX, fp32 elsewhere; true/false force it."""
    from configs import load_config
    from training import run

    cpu = torch.device("cpu")
    for has_amx in (True, False):
        monkeypatch.setattr(run, "cpu_has_amx", lambda: has_amx)
        autocast, scaler = run.autocast_for(load_config("train"), cpu)
        assert isinstance(autocast, torch.autocast) == has_amx and not scaler
        assert isinstance(run.autocast_for(load_config("train", ["train.cpu_autocast=true"]), cpu)[0],
                          torch.autocast)
        assert not isinstance(run.autocast_for(load_config("train", ["train.cpu_autocast=false"]), cpu)[0],
                              torch.autocast)
        assert not isinstance(run.autocast_for(load_config("train", ["train.precision=fp32"]), cpu)[0],
                              torch.autocast)
    with pytest.raises(ValueError, match="cpu_autocast"):
        run.autocast_for(load_config("train", ["train.cpu_autocast=maybe"]), cpu)


def test_bad_optimiser_name_exits_2(shards, tmp_path, capsys):
    argv = ["--shards", str(shards), "--out", str(tmp_path / "r")] + TINY + ["optim.name=lion"]
    assert main(argv) == 2
    assert "optim.name" in capsys.readouterr().err


def test_validation_steps_cover_the_schedule_evenly_in_a_fixed_shuffle():
    steps = validation_steps(20, 50, torch.Generator().manual_seed(0))
    assert sorted(steps.tolist()) == [int((i + 0.5) * 2.5) for i in range(20)]  # 1, 3, 6, ... 48
    again = validation_steps(20, 50, torch.Generator().manual_seed(0))
    assert torch.equal(steps, again) and not torch.equal(steps, steps.sort().values)
    # more windows than steps: every step is scored, each as often as the others
    counts = torch.bincount(validation_steps(200, 50, torch.Generator().manual_seed(1)), minlength=50)
    assert counts.min() == counts.max() == 4


def test_a_fresh_run_refuses_a_folder_holding_a_checkpoint(shards, tmp_path, capsys):
    out = tmp_path / "run"
    steps = ["train.max_steps=2", "train.val_every=2", "data.num_workers=0"]
    run(shards, out, *steps)
    checkpoint = (out / "checkpoint.pt").read_bytes()
    config = (out / "config.yaml").read_text()
    argv = ["--shards", str(shards), "--out", str(out)] + TINY + steps + ["seed=1"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a checkpoint" in err and "--resume" in err, err
    assert (out / "checkpoint.pt").read_bytes() == checkpoint and (out / "config.yaml").read_text() == config
    assert main(argv + ["--resume", "--overwrite"]) == 2
    # --overwrite starts again: the old run's files go, the new run's replace them
    (out / "tb" / "stale").write_text("x")
    summary = run_from_args(argv + ["--overwrite"])
    assert summary["step"] == 2 and not (out / "tb" / "stale").exists()
    assert load_checkpoint(out / "checkpoint.pt")["train_config"]["seed"] == 1


def test_ray_workers_take_gpus_from_the_cluster_not_the_driver(monkeypatch):
    """The choice follows Ray's cluster resources: a real local Ray (CPUs only) gives CPU workers;
    a cluster with GPUs (Ray's resources mocked: no GPU here) gives one GPU each, unless told."""
    ray = pytest.importorskip("ray")
    from training import run as run_module

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        cpu = run_module.scaling_for(2, None)
        assert not cpu.use_gpu and cpu.resources_per_worker == {"CPU": 1.0}
        monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 4.0})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the driver has none
        gpu = run_module.scaling_for(4, None)
        assert gpu.use_gpu and gpu.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}
        assert run_module.scaling_for(2, 0.5).resources_per_worker["GPU"] == 0.5
        assert not run_module.scaling_for(2, 0).use_gpu  # --gpus-per-worker 0: CPUs only
    finally:
        if started:
            ray.shutdown()
    with pytest.raises(ValueError, match="gpus-per-worker"):
        run_module.worker_resources({"GPU": 1.0}, 1, -1)
