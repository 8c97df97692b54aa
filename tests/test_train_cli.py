"""`radiogen train` on the command line: input errors exit 2 with one line, names, the
shipped-name note, the replaced-model note and Ctrl-C before the first epoch."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from napari_radiogen.cli import main  # noqa: E402


@pytest.fixture(autouse=True)
def _models(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIOGEN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("radiogen: error: ")
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.mark.parametrize("args,match", [
    (["--name", "../evil"], "model name '../evil' is not allowed"),
    (["--name", "a b/c"], "is not allowed"),
    (["--name", ""], "model name '' is not allowed"),
    (["--name=-x"], "model name '-x' is not allowed"),
    (["--limit", "0"], "--limit"), (["--limit", "-5"], "--limit"),
    (["--max-minutes", "0"], "--max-minutes"), (["--max-minutes", "-1"], "--max-minutes"),
    (["--epochs", "0"], "--epochs"), (["--folds", "-1"], "--folds"),
])
def test_bad_options_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        rc = main(["train", "phantom_demo", "--out", "runs/x", "--device", "cpu", *args])
        raise SystemExit(rc)
    assert e.value.code == 2
    assert match in _one_error_line(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "models").exists()


def test_a_typo_in_a_config_key_is_refused_with_a_suggestion(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("task: phantom-demo\ndata: phantom\ntrain:\n  epoch: 1\n")
    assert main(["train", "c.yaml", "--out", "r", "--device", "cpu"]) == 2
    assert "did you mean 'epochs'" in _one_error_line(capsys)


def test_a_shipped_configs_name_gets_a_user_suffix_and_a_second_install_says_it_replaced(
        tmp_path, capsys, monkeypatch):
    from napari_radiogen.core import models
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "phantom-demo.safetensors").write_bytes(b"")   # as if phantom-demo shipped
    monkeypatch.setattr(models, "SHIPPED_DIR", shipped)
    args = ["train", "phantom_demo", "--out", "r1", "--device", "cpu", "--epochs", "1",
            "--quiet"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "named phantom-demo-user" in cap.err
    assert (tmp_path / "r1" / "phantom-demo-user.safetensors").exists()
    assert (tmp_path / "models" / "phantom-demo-user.safetensors").exists()
    card = json.loads((tmp_path / "r1" / "phantom-demo-user.card.json").read_text())
    assert card["name"] == "phantom-demo-user"
    # the same again into another run folder: the installed model is replaced, and said so
    assert main([*args[:3], "r2", *args[4:]]) == 0
    assert "replaced the installed model phantom-demo-user" in capsys.readouterr().out
    # an explicit --name that hides the shipped model is still refused
    assert main([*args[:3], "r3", *args[4:], "--name", "phantom-demo"]) == 2
    assert "would hide the shipped model" in _one_error_line(capsys)


def test_ctrl_c_before_the_first_epoch_says_there_is_nothing_to_resume(tmp_path, capsys,
                                                                       monkeypatch):
    from napari_radiogen.core.train import engine

    def fake_train(cfg, out, **kw):
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")
        yield engine.TrainProgress(stage="prepare", phase="prepare", message="preparing")
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "train", fake_train)
    assert main(["train", "phantom_demo", "--out", "r", "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "nothing to resume yet" in err and "--resume" not in err
    # with a checkpoint in the folder, it points at --resume
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "checkpoint.safetensors").write_bytes(b"")

    def fake_train2(cfg, out, **kw):
        yield engine.TrainProgress(stage="prepare", phase="prepare", message="preparing")
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "train", fake_train2)
    assert main(["train", "phantom_demo", "--out", "r2", "--device", "cpu"]) == 130
    assert "continue with --resume" in capsys.readouterr().err


def test_a_limit_run_is_not_installed(tmp_path, capsys):
    assert main(["train", "phantom_demo", "--out", "r", "--device", "cpu", "--limit", "8",
                 "--epochs", "1", "--quiet"]) == 0
    assert not (tmp_path / "models").exists()
    card = json.loads((tmp_path / "r" / "phantom-demo.card.json").read_text())
    assert card["training_data"]["n_cohort"] == 8


def test_help_names_the_model_name_options_and_the_cache_folder(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--name" in out and "--no-install" in out and "-user" in out
    assert "RADIOGEN_CACHE_DIR" in out


def test_every_rank_takes_the_same_user_name_and_rank_0_says_why(tmp_path, capsys,
                                                                   monkeypatch):
    """Under torchrun each rank runs the CLI: a shipped config's -user name is given on every
    rank (the engine checks the name on each), the note is printed once."""
    from napari_radiogen.core import models
    from napari_radiogen.core.train import engine
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "phantom-demo.safetensors").write_bytes(b"")
    monkeypatch.setattr(models, "SHIPPED_DIR", shipped)
    names = {}

    def fake_train(cfg, out, **kw):
        names[rank] = cfg["name"]
        return iter(())
    monkeypatch.setattr(engine, "train", fake_train)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        main(["train", "phantom_demo", "--out", f"r{rank}", "--device", "cpu"])
        err = capsys.readouterr().err
        assert ("named phantom-demo-user" in err) == (rank == 0)
    assert names == {0: "phantom-demo-user", 1: "phantom-demo-user"}


def test_ctrl_c_under_torchrun_is_reported_once(tmp_path, capsys, monkeypatch):
    """torchrun passes Ctrl-C to every rank: each stops with status 130, rank 0 alone says
    where the checkpoint is."""
    from napari_radiogen.core.train import engine

    def interrupted(cfg, out, **kw):
        raise KeyboardInterrupt
        yield
    monkeypatch.setattr(engine, "train", interrupted)
    monkeypatch.chdir(tmp_path)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        assert main(["train", "phantom_demo", "--out", "r", "--device", "cpu",
                     "--no-install"]) == 130
        err = capsys.readouterr().err
        assert ("interrupted" in err) == (rank == 0), err


def test_a_shipped_config_without_the_shared_data_says_how_to_give_it(tmp_path, monkeypatch):
    """An installed package has no ../shared/data beside it: the shipped config's data folder
    is then missing, and the error says the two ways to give it (--data, or
    RADIOGEN_SHARED_DATA), in the Training widget's words there."""
    import shutil
    from napari_radiogen.core.errors import ConfigError
    from napari_radiogen.core.train import config as C
    from napari_radiogen.napari.train_widget import widget_terms
    cfg = tmp_path / "pkg" / "configs" / "segmentation_lgg.yaml"
    cfg.parent.mkdir(parents=True)
    shutil.copy(C.CONFIG_DIR / "segmentation_lgg.yaml", cfg)
    monkeypatch.setattr(C, "CONFIG_DIR", cfg.parent)          # as installed: no repository
    monkeypatch.delenv("RADIOGEN_SHARED_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        C.load_config(str(cfg))
    msg = str(e.value)
    assert "../shared/data/tcga-lgg" in msg and "--data FOLDER" in msg
    assert "RADIOGEN_SHARED_DATA to the folder that holds 'tcga-lgg'" in msg
    assert "the data folder" in widget_terms(msg)
    monkeypatch.setenv("RADIOGEN_SHARED_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="RADIOGEN_SHARED_DATA is set, but it has no"):
        C.load_config(str(cfg))
    (tmp_path / "elsewhere" / "tcga-lgg").mkdir(parents=True)
    assert C.load_config(str(cfg))["data"] == str((tmp_path / "elsewhere" / "tcga-lgg"))
    with pytest.raises(ConfigError, match="give an existing folder with --data FOLDER"):
        C.load_config(str(cfg), data=str(tmp_path / "nope"))


def _mtimes(*folders):
    return {str(p): p.stat().st_mtime_ns for d in folders for p in sorted(Path(d).rglob("*"))}


def test_resuming_a_finished_run_says_so_and_rewrites_nothing(tmp_path, capsys):
    """--resume on a run that has finished names its model and card and exits 0 without
    finishing it again (the card's date, the model, the report and the installed copy keep
    their files); so does a run finished before the checkpoint recorded it (train.log)."""
    from napari_radiogen.core.train import checkpoint as ckpt
    args = ["train", "phantom_demo", "--out", "runs/x", "--device", "cpu", "--epochs", "1",
            "--name", "ph-done", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    before = _mtimes(tmp_path / "runs", tmp_path / "models")
    assert str(tmp_path / "models" / "ph-done.safetensors") in before
    card = (tmp_path / "runs" / "x" / "ph-done.card.json").read_text()
    for legacy in (False, True):
        if legacy:
            # a run finished before the engine recorded it: every stage done, train.log's line
            tensors, st = ckpt.read_checkpoint(tmp_path / "runs" / "x")
            assert st.pop("finished")["model"] == "ph-done.safetensors"
            ckpt._write(tmp_path / "runs" / "x", tensors, st)
            before = _mtimes(tmp_path / "runs", tmp_path / "models")
        assert main([*args, "--resume"]) == 0
        cap = capsys.readouterr()
        said = cap.err + cap.out
        assert "the run in runs/x has already finished" in said, said
        assert "runs/x/ph-done.safetensors" in said and "ph-done.card.json" in said
        assert "already finished: the run in runs/x was not changed" in cap.out
        assert "installed:" not in cap.out and "replaced" not in cap.out
        assert _mtimes(tmp_path / "runs", tmp_path / "models") == before
        assert (tmp_path / "runs" / "x" / "ph-done.card.json").read_text() == card
        # starting it again (no --resume) does not point to --resume, which would do nothing
        assert main(args) == 2
        err = capsys.readouterr().err
        assert ("runs/x already holds a finished run (its model is runs/x/ph-done.safetensors); "
                "choose another --out folder to train again") in err, err
        assert "--resume" not in err


def test_resuming_a_finished_run_with_install_installs_its_model(tmp_path, capsys):
    """A run trained with --no-install, resumed with --install once it has finished: its model
    (and card) are installed under the run's name, as at the end of a run ("installed:"; a
    replaced model of that name is named), and the run folder is left as it is; a plain
    --resume installs nothing; another --name is refused with what to do instead."""
    args = ["train", "phantom_demo", "--out", "runs/x", "--device", "cpu", "--epochs", "1",
            "--name", "ph-inst", "--quiet"]
    models = tmp_path / "models"
    assert main([*args, "--no-install"]) == 0
    capsys.readouterr()
    run_files = _mtimes(tmp_path / "runs")
    assert main([*args, "--resume"]) == 0            # not asked: nothing installed
    assert "installed:" not in capsys.readouterr().out
    assert not (models / "ph-inst.safetensors").exists()
    assert main([*args, "--resume", "--install"]) == 0
    cap = capsys.readouterr()
    assert "already finished: the run in runs/x was not changed" in cap.out
    assert f"installed: {models / 'ph-inst.safetensors'}" in cap.out, cap.out
    assert "replaced" not in cap.out
    assert "its model was installed as ph-inst" in cap.err, cap.err
    assert "nothing was trained or written" in cap.err and "installed)" not in cap.err
    run = tmp_path / "runs" / "x"
    assert (models / "ph-inst.safetensors").read_bytes() == \
        (run / "ph-inst.safetensors").read_bytes()
    assert (models / "ph-inst.card.json").read_text() == (run / "ph-inst.card.json").read_text()
    assert _mtimes(tmp_path / "runs") == run_files
    from napari_radiogen.core.models import list_models
    assert "ph-inst" in [m["name"] for m in list_models()]
    # installed again: the same file, nothing replaced
    assert main([*args, "--resume", "--install"]) == 0
    out = capsys.readouterr().out
    assert "installed:" in out and "replaced" not in out
    # another run's model of that name installed since: replaced, and said so
    assert main([*args[:3], "runs/y", *args[4:]]) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "--install"]) == 0
    out = capsys.readouterr().out
    assert "note: replaced the installed model ph-inst (trained " in out and ", run y)" in out
    assert (models / "ph-inst.safetensors").read_bytes() == \
        (run / "ph-inst.safetensors").read_bytes()
    # the model's name is in its file: another name is refused, saying what to do
    assert main([*args[:-3], "--name", "other", "--quiet", "--resume", "--install"]) == 2
    err = _one_error_line(capsys)
    assert "has already finished and its model is named 'ph-inst'" in err, err
    assert "--name ph-inst" in err and not (models / "other.safetensors").exists()


def test_the_resume_mismatch_error_names_paths_as_given_on_one_line(tmp_path, capsys):
    """The refusal to resume with another config names the config files (and the run folder)
    relative to the working folder, not as absolute paths, in one line."""
    for name, n in (("a.yaml", 8), ("b.yaml", 10)):
        (tmp_path / name).write_text(
            "task: phantom-demo\ndata: phantom\nname: mm\n"
            f"phantom: {{n: {n}, slices: 2, size: 16, seed: 0}}\nmodel: {{width: 4, depth: 2}}\n"
            "train: {epochs: 1, batch_size: 4}\ntest_fraction: 0.25\n")
    assert main(["train", "a.yaml", "--out", "runs/x", "--device", "cpu", "--no-install",
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "runs" / "x"),
                 "--device", "cpu", "--no-install", "--resume"]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("radiogen: error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    line = lines[0]
    assert line.startswith("radiogen: error: runs/x: the checkpoint was made with another "
                           "config"), line
    assert "config file: a.yaml -> b.yaml" in line and "phantom.n: 8 -> 10" in line
    assert str(tmp_path) not in line and '"' not in line and "_source" not in line
