#!/usr/bin/env bash
# Conformance with llama.cpp on the same GGUF files (issue: GGUF and bitsandbytes files): the
# quickstart's base (cached by `tinylora quickstart`, or QUICKSTART_BASE=DIR) and its LoRA
# (QUICKSTART_LORA=DIR) written by `tinylora quantize --gguf` in each format and by
# `tinylora export-lora`; per format
#   greedy continuations (32 tokens, stopping at end-of-text) of the quickstart's four prompts,
#     base and base + LoRA: tinylora `generate --greedy` vs `llama-cli --temp 0`;
#   perplexity of the English held-out fortunes: tinylora `eval --context 128` (every token after
#     the first of each 128-window, windows overlapping by one) vs `llama-perplexity -c 128`
#     (the second half of each 128-token chunk), so the two count different tokens.
#   bench/gguf_conformance.sh [--formats "f32 f16 bf16 q8_0 q4_0"]
# llama.cpp is built beside the project: ${LLAMA_CPP:-../llama.cpp}/build/bin (llama-cli,
# llama-perplexity). Results: one JSON line per format on stdout, details on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
formats="f32 f16 bf16 q8_0 q4_0"
[ "${1:-}" = "--formats" ] && formats=$2
llama=${LLAMA_CPP:-../llama.cpp}/build/bin
stages=${TINYLORA_STAGES:-$HOME/.cache/tinylora/stages}
base=${QUICKSTART_BASE:-$(ls -d "$stages"/base-* 2>/dev/null | head -1)}
lora=${QUICKSTART_LORA:-$(ls -d "$stages"/lora-* 2>/dev/null | head -1)}
data=$(ls -d "$stages"/data-* 2>/dev/null | head -1)
[ -d "$base" ] && [ -d "$lora" ] && [ -d "$data" ] ||
  { echo "error: run tinylora quickstart first (no cached base, lora or data stage)" >&2; exit 2; }
out=${TMPDIR:-/tmp}/tinylora-conformance
mkdir -p "$out"
/usr/bin/python3 -c '
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        f.write(json.loads(line)["text"].rstrip("\n") + "\n")' "$data/en.eval.jsonl" "$out/en.eval.txt"
build/tinylora export-lora --model "$base" --adapter "$lora" --out "$out/lora.gguf" --force >/dev/null
for f in $formats; do
  file=$out/base-$f.gguf
  build/tinylora quantize --model "$base" --format "$f" --gguf --out "$file" --force >/dev/null
  results=()
  for with in base lora; do
    while IFS= read -r prompt; do
      ta=(); la=()
      [ "$with" = lora ] && ta=(--adapter "$lora") && la=(--lora "$out/lora.gguf")
      t=$(build/tinylora generate --model "$file" "${ta[@]}" --prompt "$prompt" --greedy \
        --max-new-tokens 32 2>/dev/null)
      l=$("$llama/llama-cli" -m "$file" "${la[@]}" -p "$prompt" -n 32 --temp 0 -no-cnv \
        --no-warmup -t 2 2>/dev/null) || l="<llama-cli exited with status $?>"
      results+=("$(/usr/bin/python3 -c '
import json, sys
prompt, t, l = sys.argv[1], sys.argv[2], sys.argv[3]
l = l.split(prompt, 1)[1] if prompt in l else l      # llama-cli echoes the prompt
l = l.replace(" [end of text]", "").rstrip("\n")
t = t.rstrip("\n")
n = 0
while n < min(len(t), len(l)) and t[n] == l[n]: n += 1
print(json.dumps({"same": t == l, "common_chars": n, "tinylora": t, "llama": l}))' \
        "$prompt" "$t" "$l")")
      echo "$f $with: ${results[-1]}" >&2
    done < <(/usr/bin/python3 -c 'import json,sys; [print(v) for v in json.load(open(sys.argv[1])).values()]' "$data/prompts.json")
  done
  tp=$(build/tinylora eval --model "$file" --data "$out/en.eval.txt" --context 128 2>/dev/null)
  lp=$("$llama/llama-perplexity" -m "$file" -f "$out/en.eval.txt" -c 128 -t 2 2>&1 | \
    grep -o "Final estimate: PPL = [0-9.]*" | grep -o "[0-9.]*$")
  /usr/bin/python3 -c '
import json, sys
rows = [json.loads(r) for r in sys.argv[4:]]
tp = json.loads(sys.argv[2])
print(json.dumps({"summary": sys.argv[1], "greedy_identical": sum(r["same"] for r in rows),
                  "greedy_runs": len(rows), "tinylora_ppl": round(tp["ppl"], 3),
                  "tinylora_tokens": tp["tokens"], "llama_ppl": float(sys.argv[3])}))' \
    "$f" "$tp" "$lp" "${results[@]}"
done
