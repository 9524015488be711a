#!/usr/bin/env bash
# Three runs of every store at 1, 16 and 64 producers; one line of results per run on stdout.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --features fjall
bin=target/release/storebench
for rep in 1 2 3; do
  for producers in 1 16 64; do
    for store in log logpre redb fjall; do
      dir=data/$store-$producers-$rep
      rm -rf "$dir"
      sync
      echo "$("$bin" "$store" "$producers" "$dir") rep=$rep"
      rm -rf "$dir"
    done
  done
done
