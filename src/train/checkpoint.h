// Training checkpoints: everything a resumed run needs to continue exactly where it stopped.
//   OUT/checkpoint/params.safetensors     the trained tensors (ParamBlock names)
//   OUT/checkpoint/optimizer.safetensors  AdamW moments: "m.<name>", "v.<name>"; for a
//                                         segmented tensor (tree leaves) only the segments
//                                         with state, as (k, segment) rows, and
//                                         "segments.<name>" (2, k) I64: their indices, then
//                                         their update counts
//   OUT/checkpoint/state.json             step, data position, run options
// Written as OUT/checkpoint.tmp, then swapped in by renames (the previous checkpoint kept as
// OUT/checkpoint.old until the new one is in place), so a crash never leaves a half-written
// checkpoint; a reader falls back to checkpoint.old when a crash hit between the renames.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "model/param_block.h"
#include "train/optimizer.h"

namespace tinylora {

struct TrainState {
  int64_t step = 0;                 // optimizer steps completed
  int64_t epoch = 0, position = 0;  // data sampler state
  int64_t tokens = 0;               // training tokens consumed
  double elapsed_s = 0;             // training time so far
  std::string run = "{}";           // JSON of the options that must match on resume
};

// `extra` may write more files (e.g. adapter_config.json) into the checkpoint directory.
void SaveCheckpoint(const std::string& out_dir, const ParamBlock& params, AdamW& opt,
                    const TrainState& state,
                    const std::function<void(const std::string& dir)>& extra);
// False when OUT has no checkpoint. Errors (exit 2) when it does not fit `params`.
bool LoadCheckpoint(const std::string& out_dir, ParamBlock* params, AdamW* opt, TrainState* state);
std::string CheckpointDir(const std::string& out_dir);

}  // namespace tinylora
