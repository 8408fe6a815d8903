// Transfer plans in Python: shardwire.plan(src_layout, dst_layout) and the summary users read
// (moves, bytes per source and destination rank, buckets, rounds, reductions).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "shardwire/planner.h"
#include "shardwire/transfer_plan.h"
#include "status_bindings.h"

namespace py = pybind11;

namespace shardwire::python {

void BindPlan(py::module_& m) {
  py::class_<TransferPlan>(m, "Plan",
                           "The byte moves that fill every shard of a destination layout from a source layout\n"
                           "(C++ TransferPlan, docs/planner.md). Immutable.")
      .def_property_readonly("src_world", &TransferPlan::src_world)
      .def_property_readonly("dst_world", &TransferPlan::dst_world)
      .def_property_readonly(
          "num_moves", [](const TransferPlan& p) { return p.moves().size(); }, "Moves (a strided move counts once).")
      .def_property_readonly("runs_before_coalescing", &TransferPlan::runs_before_coalescing,
                             "Contiguous runs before adjacent runs were merged.")
      .def_property_readonly("total_bytes", &TransferPlan::total_bytes,
                             "Bytes delivered, counting every destination of a group.")
      .def_property_readonly("num_buckets", [](const TransferPlan& p) { return p.buckets().size(); })
      .def_property_readonly("rounds", &TransferPlan::rounds, "Schedule rounds (at most K peers per rank each).")
      .def_property_readonly(
          "num_reductions", [](const TransferPlan& p) { return p.reductions().size(); },
          "Partial(sum) reductions planned at source-side reducers.")
      .def("bytes_sent_per_source", &TransferPlan::BytesSentPerSource, "Bytes each source rank sends (list).")
      .def("bytes_received_per_destination", &TransferPlan::BytesReceivedPerDestination,
           "Bytes each destination rank receives (list).")
      .def(
          "sources_of",
          [](const TransferPlan& p, int dst_rank) {
            CheckRankInRange("plan: destination", dst_rank, p.dst_world());
            return p.SourcesOf(dst_rank);
          },
          py::arg("dst_rank"), "Source ranks sending to dst_rank. Raises InvalidArgumentError out of range.")
      .def(
          "moves_to",
          [](const TransferPlan& p, int dst_rank) {
            CheckRankInRange("plan: destination", dst_rank, p.dst_world());
            py::list out;
            for (const Move& mv : p.MovesTo(dst_rank)) {
              py::dict e;
              e["src_rank"] = mv.src_rank;
              e["src_offset"] = mv.src_offset;
              e["dst_offset"] = mv.dst_offset;
              e["length"] = mv.length;
              e["count"] = mv.count;
              e["src_stride"] = mv.src_stride;
              e["dst_stride"] = mv.dst_stride;
              out.append(std::move(e));
            }
            return out;
          },
          py::arg("dst_rank"),
          "Moves into dst_rank: dicts {src_rank, src_offset, dst_offset, length, count, src_stride, dst_stride}\n"
          "(bytes): copy `count` runs of `length` bytes from src_offset + i*src_stride to dst_offset + i*dst_stride.");
  m.def(
      "plan",
      [](const Layout& src, const Layout& dst, std::uint64_t bucket_bytes, int max_concurrency) {
        PlanOptions options;
        options.bucket_bytes = bucket_bytes;
        options.max_concurrency = max_concurrency;
        GilRelease release;  // planning a trillion-parameter model takes ~1 s
        return ValueOrThrow(PlanTransfer(src, dst, options));
      },
      py::arg("src"), py::arg("dst"), py::arg("bucket_bytes") = 64ull << 20, py::arg("max_concurrency") = 4,
      "Plans the moves from layout `src` to layout `dst` (bucket_bytes: bucket size cap in bytes;\n"
      "max_concurrency: peers a rank talks to per round). Releases the GIL while planning.\n"
      "Raises LayoutMismatchError (tensor sets, shapes or dtypes differ), InvalidArgumentError.");
}

}  // namespace shardwire::python
