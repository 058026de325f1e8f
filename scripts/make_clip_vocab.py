"""Generates the CLIP tokenizer files shipped in nodes/sd/configs/clip_tokenizer/ from OpenAI's public BPE table.

The BPE merge table `bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI CLIP) is taken from the open-clip-torch wheel, so
nothing is fetched from a model hub. The vocabulary is rebuilt exactly as CLIP's `SimpleTokenizer` builds it: the
256 byte symbols, the same with the end-of-word marker, one token per merge, then the two special tokens.

    python scripts/make_clip_vocab.py                  # runs `pip download --no-deps open-clip-torch` into a temp dir
    python scripts/make_clip_vocab.py --source FILE    # a .whl holding the table, or the .txt.gz itself
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TABLE_NAME = "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2
OUT_DIR = Path(__file__).resolve().parents[1] / "nodes" / "sd" / "configs" / "clip_tokenizer"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_table(source: Path) -> str:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(TABLE_NAME))
            return gzip.decompress(wheel.read(name)).decode("utf-8")
    return gzip.decompress(source.read_bytes()).decode("utf-8")


def download_wheel(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "open-clip-torch", "-d", str(into)]
    subprocess.run(command, check=True)
    return next(into.glob("open_clip_torch-*.whl"))


def build(table: str) -> tuple[dict[str, int], list[str]]:
    merges = table.split("\n")[1 : MERGE_COUNT + 1]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def write(out_dir: Path, vocab: dict[str, int], merges: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "clean_up_tokenization_spaces": False, "errors": "replace", **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="open-clip-torch wheel or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or download_wheel(Path(tmp))
        vocab, merges = build(read_table(source))
    if len(vocab) != 49408:
        raise SystemExit(f"unexpected vocabulary size {len(vocab)} (expected 49408)")
    write(args.out, vocab, merges)
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {args.out}")


if __name__ == "__main__":
    main()
