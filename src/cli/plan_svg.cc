#include "cli/plan_svg.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace shardwire::cli {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string Bytes(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.2f} MB", b / 1e6);
  if (b >= 1e3) return fmt::format("{:.2f} kB", b / 1e3);
  return fmt::format("{:.0f} B", b);
}

// Sequential blue scale (white -> dark blue), t in [0, 1].
std::string Colour(double t) {
  t = std::clamp(t, 0.0, 1.0);
  const auto mix = [&](int a, int b) { return static_cast<int>(std::lround(a + (b - a) * t)); };
  return fmt::format("#{:02x}{:02x}{:02x}", mix(222, 8), mix(235, 48), mix(247, 107));
}

std::string RankRange(int block, int index, int world) {
  const int first = index * block;
  const int last = std::min(world, first + block) - 1;
  return first == last ? std::to_string(first) : fmt::format("{}-{}", first, last);
}

}  // namespace

std::string PlanSvg(const TrafficMatrix& m, const FabricPrediction* prediction, const std::string& title,
                    int max_links) {
  const int left = 110, top = 90;
  const int cell = std::clamp(720 / std::max({m.rows, m.cols, 1}), 2, 40);
  const int heat_w = m.cols * cell, heat_h = m.rows * cell;
  const int legend_x = left + heat_w + 40;
  const int links = prediction ? std::min<int>(max_links, static_cast<int>(prediction->links.size())) : 0;
  const int bars_top = top + heat_h + 70;
  const int bar_row = 18, bar_label_w = 300, bar_max_w = 420;
  const int width = std::max(legend_x + 190, left + bar_label_w + bar_max_w + 260);
  const int height = prediction ? bars_top + 70 + links * bar_row + 20 : top + heat_h + 60;
  std::uint64_t max_cell = 0;
  for (std::uint64_t b : m.bytes) max_cell = std::max(max_cell, b);

  std::string s;
  s += fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect x=\"0\" y=\"0\" width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
      width, height);
  s += fmt::format("<text x=\"{}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", left, Escape(title));
  s += fmt::format(
      "<text x=\"{}\" y=\"44\">bytes each source rank sends to each destination rank ({} x {} ranks, cells of {} x {} "
      "ranks)</text>\n",
      left, m.src_world, m.dst_world, m.src_block, m.dst_block);
  // Axes.
  s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">destination rank</text>\n",
                   left + heat_w / 2, top - 26);
  s += fmt::format(
      "<text x=\"{0}\" y=\"{1}\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 {0} {1})\">source "
      "rank</text>\n",
      24, top + heat_h / 2);
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"white\" stroke=\"#888\"/>\n", left, top,
                   heat_w, heat_h);
  const int col_step = std::max(1, (m.cols * 60 + heat_w - 1) / std::max(heat_w, 1));
  for (int c = 0; c < m.cols; c += col_step) {
    const int x = left + c * cell + cell / 2;
    s += fmt::format("<text x=\"{0}\" y=\"{1}\" text-anchor=\"start\" transform=\"rotate(-45 {0} {1})\">{2}</text>\n",
                     x, top - 4, RankRange(m.dst_block, c, m.dst_world));
  }
  const int row_step = std::max(1, (m.rows * 14 + heat_h - 1) / std::max(heat_h, 1));
  for (int r = 0; r < m.rows; r += row_step) {
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left - 4, top + r * cell + cell / 2 + 4,
                     RankRange(m.src_block, r, m.src_world));
  }
  // Cells.
  s += "<g class=\"heatmap\">\n";
  for (int r = 0; r < m.rows; ++r) {
    for (int c = 0; c < m.cols; ++c) {
      const std::uint64_t b = m.at(r, c);
      if (b == 0) continue;
      const double t = max_cell ? static_cast<double>(b) / static_cast<double>(max_cell) : 0;
      s += fmt::format(
          "<rect class=\"cell\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" data-row=\"{}\" "
          "data-col=\"{}\" data-bytes=\"{}\"><title>source {} -&gt; destination {}: {}</title></rect>\n",
          left + c * cell, top + r * cell, cell, cell, Colour(t), r, c, b, RankRange(m.src_block, r, m.src_world),
          RankRange(m.dst_block, c, m.dst_world), Bytes(static_cast<double>(b)));
    }
  }
  s += "</g>\n";
  // Legend: 10 steps from the largest cell (top) to 0 (bottom).
  const int legend_h = std::min(200, std::max(100, heat_h));
  s += fmt::format("<text x=\"{}\" y=\"{}\">bytes per cell</text>\n", legend_x, top - 8);
  for (int i = 0; i < 10; ++i) {
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"20\" height=\"{}\" fill=\"{}\"/>\n", legend_x,
                     top + i * legend_h / 10, legend_h / 10 + 1, Colour(1.0 - i / 9.0));
  }
  s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"20\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n", legend_x,
                   top, legend_h / 10 * 10);
  s +=
      fmt::format("<text x=\"{}\" y=\"{}\">{}</text>\n", legend_x + 26, top + 10, Bytes(static_cast<double>(max_cell)));
  s += fmt::format("<text x=\"{}\" y=\"{}\">0 (white: nothing)</text>\n", legend_x + 26, top + legend_h / 10 * 10);

  if (prediction != nullptr) {
    const FabricPrediction& p = *prediction;
    const double ratio = p.ingress_bound_seconds > 0 ? p.predicted_seconds / p.ingress_bound_seconds : 0;
    s += fmt::format(
        "<text x=\"{}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">busiest links (bytes / "
        "bandwidth)</text>\n",
        left, bars_top);
    s += fmt::format(
        "<text x=\"{}\" y=\"{}\">prediction {:.3f} s in {} rounds; link bound {:.3f} s; ingress bound {:.3f} s; "
        "prediction / ingress bound {:.3f}</text>\n",
        left, bars_top + 18, p.predicted_seconds, p.rounds.size(), p.link_bound_seconds, p.ingress_bound_seconds,
        ratio);
    s += fmt::format("<text x=\"{}\" y=\"{}\">NIC {}, NVLink {}, LOCAL {}</text>\n", left, bars_top + 34,
                     Bytes(static_cast<double>(p.nic_bytes)), Bytes(static_cast<double>(p.nvlink_bytes)),
                     Bytes(static_cast<double>(p.local_bytes)));
    const double max_s = links > 0 ? std::max(p.links[0].seconds, 1e-30) : 1;
    for (int i = 0; i < links; ++i) {
      const LinkLoad& l = p.links[static_cast<std::size_t>(i)];
      const int y = bars_top + 50 + i * bar_row;
      const int w = std::max(1, static_cast<int>(std::lround(bar_max_w * l.seconds / max_s)));
      const bool ingress =
          l.kind == LinkKind::kNicIngress || l.kind == LinkKind::kNvlinkIngress || l.kind == LinkKind::kNodeIngress;
      s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", left + bar_label_w - 6, y + 12,
                       Escape(l.Name()));
      s += fmt::format(
          "<rect class=\"link\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" data-bytes=\"{}\" "
          "data-seconds=\"{}\"/>\n",
          left + bar_label_w, y, w, bar_row - 4, ingress ? "#d95f02" : "#1b9e77", l.bytes, l.seconds);
      s += fmt::format("<text x=\"{}\" y=\"{}\">{}, {:.3f} s, sets {} rounds</text>\n", left + bar_label_w + w + 6,
                       y + 12, Bytes(static_cast<double>(l.bytes)), l.seconds, l.rounds_bound);
    }
    s += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"#555\">orange: ingress links, green: egress links</text>\n", left,
                     bars_top + 50 + links * bar_row + 14);
  }
  s += "</svg>\n";
  return s;
}

}  // namespace shardwire::cli
