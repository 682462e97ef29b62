"""Prepare token shards: python tools/prepare_data.py --source wikipedia-sample --out DIR --seq-len L
(or the console script: dsl-prepare-data --source ... --out DIR --seq-len L).

Rerunning an interrupted preparation with the same arguments resumes it (finished groups are kept).
"""

from __future__ import annotations

import argparse

from dsl_scale.data.prepare import DEFAULT_DOCS_PER_GROUP, format_summary, prepare
from dsl_scale.data.writers import DEFAULT_SHARD_SIZE_BYTES, FORMATS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", default="wikipedia-sample",
                        help="wikipedia-sample, packaged-english, synthetic-hmm[-states64-symbols64-succ4-seed0-"
                             "n65536] (with --tokenizer synthetic), or a .txt / .jsonl / .jsonl.zst / "
                             "Wikipedia .xml[.bz2] dump file, or a folder of them (e.g. OpenWebText .txt files), or "
                             "hf:NAME[:SPLIT], a Hugging Face dataset's text column (a save_to_disk folder or a Hub "
                             "name, streamed)")
    parser.add_argument("--out", required=True, help="output directory (train/, val/, manifest.json)")
    parser.add_argument("--seq-len", type=int, required=True, help="block length L incl. BOS and EOS")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="held-out tail of documents")
    parser.add_argument("--shard-size-bytes", type=int, default=DEFAULT_SHARD_SIZE_BYTES,
                        help="upper size of one shard file")
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2, char, synthetic[-N], or hf:PATH_OR_ID (a "
                        "tokenizer.json, its folder or a Hub id); recorded in the manifest")
    parser.add_argument("--skip-bad-files", action="store_true",
                        help="leave out source files that are not UTF-8 text (listed in the summary and manifest)")
    parser.add_argument("--format", default="mds", choices=sorted(FORMATS),
                        help="MDS shards, webdataset tar shards, or both (same blocks, same order)")
    parser.add_argument("--workers", type=int, default=1, help="tokenising processes")
    parser.add_argument("--docs-per-group", type=int, default=DEFAULT_DOCS_PER_GROUP,
                        help="documents per independently written (parallel, resumable) group")
    parser.add_argument("--overwrite", action="store_true", help="replace data already prepared in --out")
    args = parser.parse_args(argv)
    try:
        manifest = prepare(
            args.source, args.out, args.seq_len, val_fraction=args.val_fraction,
            shard_size_bytes=args.shard_size_bytes, tokenizer=args.tokenizer, fmt=args.format,
            overwrite=args.overwrite, workers=args.workers, docs_per_group=args.docs_per_group,
            skip_bad_files=args.skip_bad_files,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        parser.exit(2, f"prepare_data: error: {err}\n")
    print(format_summary(manifest, args.out))
    return 0
