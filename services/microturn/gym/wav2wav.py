"""wav → wav: feed any WAV through a model; write the model's output WAV of the same length.

    python -m microturn.gym.wav2wav IN.wav OUT.wav [--checkpoint PATH] [--responder model|silence]

Input of any rate/channels is converted to 16 kHz mono with sox. The model hears the audio only (no
video, no text); its text channel and events are written next to OUT as OUT.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from microturn.gym.harness import run_sessions
from microturn.gym.layout import CHUNK_SAMPLES, FRAME_SIZE, SAMPLE_RATE
from microturn.gym.model_responder import EngineResponder, default_checkpoint, load_model
from microturn.gym.responders import Responder, SilenceResponder
from microturn.gym.session import Session


def read_wav_16k(path: Path) -> np.ndarray:
    """int16 mono 16 kHz samples of any WAV sox can read."""
    if not path.is_file():
        raise FileNotFoundError(f"input WAV {path} does not exist")
    proc = subprocess.run(
        ["sox", str(path), "-r", str(SAMPLE_RATE), "-b", "16", "-c", "1", "-e", "signed", "-t", "raw", "-"],
        capture_output=True,
    )
    if proc.returncode != 0:
        raise ValueError(f"cannot read {path} as audio: {proc.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(proc.stdout, dtype="<i2").astype(np.int16)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def audio_session(pcm: np.ndarray, seed: int = 0) -> Session:
    """A session holding just this audio (padded to whole chunks), a black video and no targets."""
    n = max(1, -(-len(pcm) // CHUNK_SAMPLES))
    padded = np.zeros(n * CHUNK_SAMPLES, np.int16)
    padded[: len(pcm)] = pcm
    return Session(
        family="wav",
        seed=seed,
        num_chunks=n,
        pcm_in=padded,
        video=np.zeros((n, 1, FRAME_SIZE, FRAME_SIZE, 3), np.uint8),
        text_in=[[] for _ in range(n)],
        background_in=[[] for _ in range(n)],
        target_pcm=np.zeros_like(padded),
        target_text=[""] * n,
        target_delegations={},
        user_words=[],
        plan=[],
    )


def convert(src: Path, dst: Path, responder: Responder, seed: int = 0) -> dict:
    pcm = read_wav_16k(src)
    session = audio_session(pcm, seed)
    (track,) = run_sessions(responder, [session])
    write_wav(dst, track.pcm[: len(pcm)])
    info = {
        "input": str(src),
        "samples": len(pcm),
        "model_version": track.model_version,
        "text": {str(k): t for k, t in enumerate(track.text) if t},
        "delegations": [{"chunk": k, "request": r} for k, r in track.delegations],
    }
    dst.with_suffix(dst.suffix + ".json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m microturn.gym.wav2wav", description=__doc__.split("\n")[0])
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--responder", choices=["model", "silence"], default="model")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.responder == "silence":
        responder: Responder = SilenceResponder()
    else:
        if args.checkpoint is not None and not args.checkpoint.is_file():
            p.error(f"checkpoint {args.checkpoint} does not exist")
        model, label = load_model(args.checkpoint or default_checkpoint())
        responder = EngineResponder(model, label, num_slots=1)
    try:
        info = convert(args.input, args.output, responder, args.seed)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    print(f"wrote {args.output} ({info['samples']} samples) with {responder.label}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
