"""The data-backed tasks through the command line: without data, or with a corrupt file, ``unicornn train``
fails with one line naming every file, exit code 2 and no run directory. (Each task's own test file trains
it end to end through :func:`cli_train` on miniature files in the official format.)"""

import json
import logging

import pytest
import torch

from unicornn.cli import main
from unicornn.tasks import bidmc, cifar10, download, eigenworms, imdb


def cli_train(capsys, task: str, data_dir, out, *sets: str, preset: str = "small") -> dict:
    """``unicornn train TASK --preset small`` for one epoch (plus ``sets``), then ``unicornn report``.

    Asserts both exit with 0 and returns the run's result.json.
    """
    argv = ["train", task, "--preset", preset, "--data-dir", str(data_dir), "--out", str(out), "--quiet",
            "--no-tensorboard", "--threads", "1", "--set", "epochs=1"]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)  # --threads changes the whole process
    err = capsys.readouterr().err
    assert code == 0, err
    run = out / task / "seed-0"
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["epochs_done"] == 1
    assert main(["report", str(out / task), "--no-plot"]) == 0
    assert task in capsys.readouterr().out
    return result


def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)  # also bidmc's Zenodo look-up


def expected_parts(task: str, data_dir) -> tuple[list[str], list[str]]:
    """(what the missing-data message must name, the files' names) for ``task``."""
    if task == "noisy-cifar10":
        a = cifar10.ARCHIVE
        return [a.name, a.urls[0], a.md5, str(data_dir / "cifar10")], [a.name]
    if task == "eigenworms":
        name = eigenworms.ARCHIVE_NAME
        return [name, eigenworms.ARCHIVE_URLS[0], eigenworms.ARCHIVE_SHA256, str(data_dir / "eigenworms")], [
            name
        ]
    if task == "imdb":
        files = (imdb.ARCHIVE, imdb.GLOVE)
        parts = [p for f in files for p in (f.name, f.urls[0], f.md5)]
        return parts + [str(data_dir / "imdb")], [f.name for f in files]
    target = bidmc.TARGETS[task.split("-")[1]]
    urls = [bidmc.ZENODO_FILE.format(record=target.record, name=n) for n in target.files]
    # no md5 is published outside the Zenodo record: the message says where it is listed
    return [*target.files, *urls, target.record_page(), str(target.directory(data_dir))], list(target.files)


TASKS = ["noisy-cifar10", "eigenworms", "bidmc-rr", "bidmc-hr", "imdb"]


def train_fails(capsys, caplog, task, data_dir, out) -> str:
    caplog.set_level(logging.INFO)
    code = main(["train", task, "--preset", "small", "--data-dir", str(data_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("unicornn: error: ") and err.count("\n") == 1, err  # one line
    assert "Traceback" not in err
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # nothing else shown
    assert not out.exists()  # no run directory (nor the output directory) was created
    return err


@pytest.mark.parametrize("task", TASKS)
def test_missing_data_one_line_exit_2_no_run_directory(capsys, caplog, monkeypatch, tmp_path, task):
    offline(monkeypatch)
    data = tmp_path / "data"
    err = train_fails(capsys, caplog, task, data, tmp_path / "runs")
    parts, _ = expected_parts(task, data)
    for part in parts:
        assert part in err, part


@pytest.mark.parametrize("task", TASKS)
def test_corrupt_file_detected_never_used(capsys, caplog, monkeypatch, tmp_path, task):
    offline(monkeypatch)
    data = tmp_path / "data"
    parts, names = expected_parts(task, data)
    directory = data / (
        "cifar10" if task == "noisy-cifar10" else task if task in ("eigenworms", "imdb") else ""
    )
    if task.startswith("bidmc"):
        directory = bidmc.TARGETS[task.split("-")[1]].directory(data)
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_bytes(b"not the official file\n")
        if task.startswith("bidmc"):  # the record's md5, as a user writes it for an offline check
            (directory / f"{name}.md5").write_text("0123456789abcdef0123456789abcdef\n")
    err = train_fails(capsys, caplog, task, data, tmp_path / "runs")
    assert "checksum mismatch" in err and names[0] in err
    for name in names:
        assert (directory / name).read_bytes() == b"not the official file\n"  # neither used nor deleted
