"""Issue 25, the M/EEG cases (``mindvis-prep things-meg`` and ``mindvis-stream``): each case of the issue has a test
that failed on the code before and passes now.

| case (issue 25)                                                               | test                                          |
|-------------------------------------------------------------------------------|-----------------------------------------------|
| #4  things-meg rerun with other settings (--h-freq 10 after 40) mixed runs    | test_rerun_with_other_settings_redoes_runs    |
| #8  mindvis-stream --chunk 0 / -1 became one sample; range not in --help      | test_stream_chunk_must_be_positive            |
| #8  mindvis-stream --events without image_path: no score, no warning          | test_stream_events_without_images_says_so     |
| #10 truncated FIF in prep (traceback)                                         | test_truncated_fif_in_prep_names_the_file     |
| #10 truncated FIF in stream (a line naming no file)                           | test_truncated_fif_in_stream_names_the_file   |
| #10 non-numeric onset in events.tsv (prep and stream --events)                | test_non_numeric_onset_is_one_line            |
| #10 mindvis-stream --input a text file (AssertionError inside MNE)            | test_stream_input_text_file_is_one_line       |
| #10 mindvis-stream --events without onset                                     | test_stream_events_without_onset_is_one_line  |
| #10 mindvis-stream on a THINGS-MEG ridge run (shape error; README: it streams) | test_stream_ridge_run                         |
| #10 mindvis-prep things-meg --out a regular file                              | test_prep_out_a_file_is_one_line              |
"""
import json
import shutil

import numpy as np
import pytest

from mindvis.data_prep.cli import main as prep_main
from mindvis.data_prep.things_meg import prepare_things_meg
from mindvis.data_prep.things_meg_settings import MEGSettings
from mindvis.pipelines.stream import main as stream_main

from .meeg_fixtures import prepared, release, run_files, runs  # noqa: F401


def test_rerun_with_other_settings_redoes_runs(release, tmp_path, monkeypatch):
    """A finished run records the settings that made it; a rerun with other settings prepares it again, so the
    result equals a fresh preparation with the new settings (never runs of both mixed)."""
    from mindvis.data_prep import things_meg

    real, calls = things_meg._prepare_run, []

    def dies_on_the_second(run, *a):
        if calls:
            raise KeyboardInterrupt
        calls.append(run)
        return real(run, *a)

    monkeypatch.setattr(things_meg, "_prepare_run", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        prepare_things_meg(release / "THINGS-MEG", 1, tmp_path / "a", MEGSettings(image_size=32, h_freq=40.0))
    (done,) = list((tmp_path / "a" / "runs").iterdir())
    assert json.loads((done / ".done").read_text())["settings"]["h_freq"] == 40.0
    calls.clear()
    monkeypatch.setattr(things_meg, "_prepare_run", lambda run, *a: (calls.append(run), real(run, *a))[1])
    prepare_things_meg(release / "THINGS-MEG", 1, tmp_path / "a", MEGSettings(image_size=32, h_freq=10.0))
    assert len(calls) == 2  # the run finished with 40 Hz was prepared again
    prepare_things_meg(release / "THINGS-MEG", 1, tmp_path / "b", MEGSettings(image_size=32, h_freq=10.0))
    assert (tmp_path / "a" / "trials.npy").read_bytes() == (tmp_path / "b" / "trials.npy").read_bytes()
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["settings"]["h_freq"] == 10.0


def test_stream_chunk_must_be_positive(runs, release, capsys):
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as e:
            stream_main(["--model", str(runs["ridge"]), "--input", str(run_files(release)[0]), "--chunk", bad])
        assert e.value.code == 2 and "--chunk must be > 0 s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        stream_main(["--help"])
    assert "> 0, at least one sample" in " ".join(capsys.readouterr().out.split())


def _outside_bids(release, tmp_path, subject=1):
    """A recording and its events.tsv copied out of the BIDS tree (no sample attributes next to it)."""
    run = run_files(release, subject)[0]
    rec, events = tmp_path / "recording.fif", tmp_path / "events.tsv"
    shutil.copy(run, rec)
    shutil.copy(str(run).replace("_meg.fif", "_events.tsv"), events)
    return rec, events


def test_stream_events_without_images_says_so(runs, release, tmp_path, capsys):
    rec, events = _outside_bids(release, tmp_path)
    assert stream_main(["--model", str(runs["bm"]), "--input", str(rec), "--events", str(events), "--subject", "1",
                        "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr()
    assert "windows are decoded but not scored" in err.err and "no window scored" in err.out
    summary = json.loads((tmp_path / "s" / "stream.json").read_text())
    assert summary["windows"] > 0 and "top5_accuracy" not in summary
    # with the sample attributes named, the same windows are scored
    attributes = release / "THINGS-MEG" / "sourcedata" / "sample_attributes_P1.csv"
    assert stream_main(["--model", str(runs["bm"]), "--input", str(rec), "--events", str(events), "--subject", "1",
                        "--attributes", str(attributes), "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "stream.json").read_text())["scored_windows"] > 0


def _truncated(release, tmp_path):
    root = tmp_path / "bids"
    shutil.copytree(release / "THINGS-MEG", root)
    run = sorted((root / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif"))[1]
    data = run.read_bytes()
    run.write_bytes(data[:len(data) // 3])
    return root, run


def test_truncated_fif_in_prep_names_the_file(release, tmp_path, capsys):
    root, run = _truncated(release, tmp_path)
    assert prep_main(["things-meg", "--root", str(root), "--subject", "1", "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # (the rest: progress bars)
    assert len(err) == 1 and str(run) in err[0] and "not a recording" in err[0]


def test_truncated_fif_in_stream_names_the_file(runs, release, tmp_path, capsys):
    _, run = _truncated(release, tmp_path)
    assert stream_main(["--model", str(runs["ridge"]), "--input", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "not a recording MNE-Python reads" in err[0]


def test_non_numeric_onset_is_one_line(runs, release, tmp_path, capsys):
    root = tmp_path / "bids"
    shutil.copytree(release / "THINGS-MEG", root)
    events = sorted((root / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_events.tsv"))[0]
    lines = events.read_text().splitlines()
    lines[3] = "soon" + lines[3][lines[3].index("\t"):]
    events.write_text("\n".join(lines) + "\n")
    assert prep_main(["things-meg", "--root", str(root), "--subject", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{events} row 4, column onset: 'soon' is not a number" in err
    rec = sorted((root / "sub-BIGMEG1" / "ses-01" / "meg").glob("*_meg.fif"))[0]
    assert stream_main(["--model", str(runs["ridge"]), "--input", str(rec), "--events", str(events)]) == 2
    assert "row 4, column onset: 'soon' is not a number" in capsys.readouterr().err


def test_stream_input_text_file_is_one_line(runs, tmp_path, capsys):
    text = tmp_path / "notes.fif"
    text.write_text("not a recording\n")
    assert stream_main(["--model", str(runs["ridge"]), "--input", str(text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(text) in err[0]
    assert stream_main(["--model", str(runs["ridge"]), "--input", str(tmp_path / "missing.fif")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_stream_events_without_onset_is_one_line(runs, release, tmp_path, capsys):
    rec, events = _outside_bids(release, tmp_path)
    lines = events.read_text().splitlines()
    events.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")  # the onset column removed
    assert stream_main(["--model", str(runs["ridge"]), "--input", str(rec), "--events", str(events)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected at least onset and trial_type" in err[0]


def test_stream_ridge_run(runs, release, tmp_path):
    """Ridge reads the window flattened, as it was trained; its gallery is the recording's subject's test images."""
    run = run_files(release, 2)[0]
    assert stream_main(["--model", str(runs["ridge"]), "--input", str(run), "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "stream.json").read_text())
    assert summary["windows"] > 0 and summary["scored_windows"] > 0 and summary["chance_top5"] == 1.0
    first = json.loads((tmp_path / "s" / "stream.jsonl").read_text().splitlines()[0])
    assert len(first["top5"]) == len(set(first["top5"])) == 4  # one subject's 4 test images, none twice
    assert np.isfinite(summary["real_time_factor"])


def test_prep_out_a_file_is_one_line(release, tmp_path, capsys):
    (tmp_path / "out").write_text("")
    assert prep_main(["things-meg", "--root", str(release / "THINGS-MEG"), "--subject", "1", "--out",
                      str(tmp_path / "out")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
