"""`fleet preview --tokenizer DIR`: the reference ids, printed by the command users run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_cli.__main__ import main
from tests.prompting.test_golden_vectors import IDS_70B, PSM_IDS, PSM_PREFIX, PSM_SUFFIX


def _preview_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["preview", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_psm_example_from_a_checkpoint_directory(tiny_checkpoints: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    view = _preview_json(capsys, "--tokenizer", str(tiny_checkpoints["infill"]),
                         "--prefix", PSM_PREFIX, "--suffix", PSM_SUFFIX)
    assert view["token_ids"] == PSM_IDS
    assert view["format"] == "infill-psm" and view["decode_as_infill"] is True
    assert view["pieces"][:2] == ["<s>", "▁<PRE>"] and view["stop_pieces"] == ["▁<EOT>"]


def test_70b_chat_example_and_its_stop(tiny_checkpoints: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    view = _preview_json(capsys, "--tokenizer", str(tiny_checkpoints["70b"]),
                         "--chat-format", "codellama-70b", "--system", "System prompt ",
                         "First user query", "Model response to first query",
                         "Second user query")
    assert view["token_ids"] == IDS_70B
    assert view["stop_pieces"] == ["<step>"] and view["token_count"] == len(IDS_70B)


def test_table_output_and_refusals(tiny_checkpoints: dict[str, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "--tokenizer", str(tiny_checkpoints["plain"]), "--prompt",
                 "import os"]) == 0
    out = capsys.readouterr().out
    assert "format=completion" in out and "'<s>'" in out and "stop tokens: 2 '</s>'" in out

    # The 34B layout has no infill pieces; chat needs a format; roles must alternate.
    assert main(["preview", "--tokenizer", str(tiny_checkpoints["plain"]), "--prefix", "a"]) == 1
    assert "cannot infill: its tokenizer has no ▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT> pieces" in \
        capsys.readouterr().err
    assert main(["preview", "--tokenizer", str(tiny_checkpoints["infill"]), "hi"]) == 1
    assert "cannot chat" in capsys.readouterr().err
    assert main(["preview", "--tokenizer", str(tiny_checkpoints["infill"]), "--chat-format",
                 "llama2", "user:a", "user:b"]) == 1
    assert "messages[1].role" in capsys.readouterr().err


def test_infill_follows_the_tokenizer_unless_the_flag_says_otherwise(
        tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    infill, seventy, plain = (str(tiny_checkpoints[k]) for k in ("infill", "70b", "plain"))
    # The 70B tokenizer has the infill pieces, but the catalog serves no 70B infill.
    for request in (["--prefix", PSM_PREFIX], ["--prompt", "def f(<FILL_ME>):"]):
        assert main(["preview", "--tokenizer", seventy, *request]) == 1
        err = capsys.readouterr().err
        assert f"{seventy} cannot infill" in err and "70B" in err and "--infill" in err
    assert _preview_json(capsys, "--tokenizer", seventy, "--infill",
                         "--prefix", PSM_PREFIX)["format"] == "infill-psm"
    assert main(["preview", "--tokenizer", infill, "--no-infill", "--prefix", "a"]) == 1
    assert "cannot infill: --no-infill was given" in capsys.readouterr().err
    # Forcing it where the pieces are missing names the missing piece.
    assert main(["preview", "--tokenizer", plain, "--infill", "--prefix", "a"]) == 1
    assert "no '▁<PRE>' piece" in capsys.readouterr().err
    # A completion prompt does not need the model to infill.
    assert _preview_json(capsys, "--tokenizer", seventy, "--prompt", "x")["format"] == "completion"
