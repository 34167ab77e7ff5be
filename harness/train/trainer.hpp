// The trainer: a resolved config in, a finished / failed / nan run with its rows in the store out.
#pragma once
#include <string>

#include "harness/config/config.hpp"
#include "harness/dist/dist.hpp"
#include "harness/store/store.hpp"

namespace ssr::train {

struct Options {
  // Train this existing row instead of creating one (a sweep job, ssr train --resume): from its
  // last checkpoint when it has one, else from step 0.
  std::optional<int64_t> run;
  // `ssr train --resume`: a run without a checkpoint to continue from is refused (with what its
  // folder holds) rather than trained again from step 0, which --restart asks for.
  bool require_checkpoint = false;
  bool restart = false;  // --resume --restart: from step 0, whatever checkpoint the folder holds
  bool quiet = false;    // no progress output
  // This process's rank in a data-parallel job (dist::environment()); one process by default.
  // Only rank 0 writes the store and checkpoints.
  dist::Env dist;
};

struct Outcome {
  int64_t run_id = 0;
  std::string status;  // finished | nan | failed | interrupted
  int signal = 0;      // interrupted: the signal that stopped it
};

// Runs the whole job. Data and model errors before the run starts throw (nothing is stored);
// once the row exists every failure is recorded on it.
Outcome train(const config::Config& cfg, store::Store& store, const Options& opts);

}  // namespace ssr::train
