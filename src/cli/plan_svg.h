// `shardwire plan --svg`: a standalone SVG picture of a transfer plan.
#pragma once

#include <string>

#include "shardwire/fabric_model.h"
#include "shardwire/traffic_matrix.h"

namespace shardwire::cli {

/// An SVG 1.1 document (hand-written text, no scripts, no external references) with
///  * a heat map of `matrix`: one cell per (source block, destination block), colour by
///    bytes (linear scale from 0 to the largest cell; empty cells stay white), rows =
///    source ranks, columns = destination ranks, axis labels naming the rank blocks, and
///    a colour legend in bytes. Every non-empty cell is a <rect class="cell"> carrying
///    data-row, data-col and data-bytes (the exact byte count) and a <title> tooltip;
///  * when `prediction` is given: a bar chart of its `max_links` busiest links (seconds =
///    bytes / bandwidth), each bar a <rect class="link"> with data-bytes, and a caption
///    with the prediction, the bounds and their ratio.
/// `title` heads the picture (XML-escaped). Thread-safety: pure function.
std::string PlanSvg(const TrafficMatrix& matrix, const FabricPrediction* prediction, const std::string& title,
                    int max_links = 16);

}  // namespace shardwire::cli
