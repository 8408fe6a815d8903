// `shardwire demo rl-sync`: N trainer processes (FSDP) push a real model's weights into
// R inference engines of T ranks each (TP), S times, over UCX; every engine rank
// verifies its shard byte for byte after every step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace shardwire::cli {

struct RlSyncOptions {
  int trainers = 2;
  int engines = 2;
  int tp = 2;
  std::string trainer_layout;  ///< layout string (overrides --trainers), e.g. "hsdp=2x2"
  std::string engine_layout;   ///< layout string (overrides --engines/--tp), e.g. "tp=2,ep=2,dp=2"
  int steps = 5;
  std::string engine_dtype = "auto";  ///< engine weight format: auto | trainer | fp8-block
  bool double_buffer = false;         ///< engines keep serving the old version while the new one lands
  bool verify_digests = false;        ///< engines commit a version only if its digests match
  int max_concurrency = 4;            ///< K of the plan's rounds (WeightSyncOptions::max_concurrency)
  bool relay = false;                 ///< engine-to-engine relays (WeightSyncOptions::relay_broadcasts)
  bool restart_engines = false;       ///< dynamic membership; dead engines are restarted and catch up (P2P)
  /// When engines verify their weights byte for byte: "every" step, or only the "last" (and
  /// the checkpoint they start from), as the Python bench's receivers do (comparable runs).
  std::string verify = "every";
  /// Memory of the engines' weight buffers: "auto", "shared" or "private"
  /// (WeightSyncOptions::buffer_memory).
  std::string engine_memory = "auto";
  /// Transport lanes per trainer (WeightSyncOptions::lanes); 0: automatic, the host's cores
  /// divided among the trainers, at least 1 and at most kDefaultLanes each.
  std::uint32_t trainer_lanes = 0;
  std::uint64_t staging_bytes = 0;  ///< trainers' conversion staging bound in bytes (0: the default, 64 MiB)
  std::uint32_t staging_slots = 0;  ///< slots of that staging ring (0: automatic)
  bool staging_only = false;        ///< converting push: always the staging ring, never into mapped engine buffers
  bool lane_copies = false;  ///< the trainers' lanes copy every direct move (WeightSyncOptions::copy_into_mapped off)
  std::string checkpoint;    ///< empty: the default (real tiny model, or generated)
  std::string config;        ///< empty: the config.json beside the checkpoint
  std::string generate;      ///< HF config to generate a checkpoint from ("tinyllama-1.1b" = built in)
  int layers = 0;            ///< with --generate: decoder layers (0 = as the config says)
  std::string work_dir;      ///< where generated checkpoints go
  std::uint16_t port = 0;    ///< port of the in-process coordinator (0 = any free port)
  std::string coordinator;   ///< HOST:PORT of a running coordinator; empty: start one in process
  double timeout_s = 120;    ///< bound of every wait
  std::string json_out;      ///< write the summary as JSON here
  std::string job;           ///< job name (rendezvous key prefix); empty: rl-sync-<pid>
  /// Serve the in-process coordinator's metrics at http://127.0.0.1:PORT/metrics (0: any free
  /// port); unset: no metrics.
  std::optional<int> metrics_port;
};

/// Registers the `rl-sync` subcommand on `demo`; the callback stores its exit code.
void AddRlSyncCommand(CLI::App& demo, int* exit_code);

/// Registers the hidden `worker` subcommand the demo starts its processes with.
void AddRlSyncWorkerCommand(CLI::App& app, int* exit_code);

}  // namespace shardwire::cli
