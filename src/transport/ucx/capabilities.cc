// ProbeTransportCapabilities: what UCX can do on this machine, asked at run
// time (UCT component and memory-domain queries, ucp_context_query), so a build
// that runs on a GPU node reports CUDA and one that runs here says why not.
#include <uct/api/uct.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "shardwire/transport_capabilities.h"
#include "transport/ucx/ucx_raii.h"

namespace shardwire {

namespace {

struct ComponentListDeleter {
  void operator()(uct_component_h* c) const { uct_release_component_list(c); }
};
struct MdConfigDeleter {
  void operator()(uct_md_config_t* c) const { uct_config_release(c); }
};
struct MdDeleter {
  void operator()(uct_md* m) const { uct_md_close(m); }
};
struct TlListDeleter {
  void operator()(uct_tl_resource_desc_t* r) const { uct_release_tl_resource_list(r); }
};

struct KindSpec {
  ucs_memory_type_t type;
  const char* name;
  const char* component_prefix;  // UCT components that would bring the kind
};

}  // namespace

Result<TransportCapabilities> ProbeTransportCapabilities() {
  TransportCapabilities caps;
  caps.ucx_version = ucp_get_version_string();

  // UCP's view: memory types the context supports.
  std::uint64_t ucp_types = 0;
  {
    ucp_config_t* raw_config = nullptr;
    ucs_status_t st = ucp_config_read(nullptr, nullptr, &raw_config);
    if (st != UCS_OK) return transport::UcsError("ucp_config_read", st);
    transport::UcpConfig config(raw_config);
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
    ucp_context_h raw = nullptr;
    st = ucp_init(&params, config.get(), &raw);
    if (st != UCS_OK) return transport::UcsError("ucp_init", st);
    transport::UcpContext context(raw);
    ucp_context_attr_t attr{};
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    st = ucp_context_query(raw, &attr);
    if (st != UCS_OK) return transport::UcsError("ucp_context_query", st);
    ucp_types = attr.memory_types;
  }

  // UCT's view: every component, its memory domains and their transports.
  uct_component_h* raw_components = nullptr;
  unsigned num_components = 0;
  ucs_status_t st = uct_query_components(&raw_components, &num_components);
  if (st != UCS_OK) return transport::UcsError("uct_query_components", st);
  std::unique_ptr<uct_component_h, ComponentListDeleter> components(raw_components);
  std::vector<std::string> component_names;
  std::uint64_t md_types = 0;
  for (unsigned c = 0; c < num_components; ++c) {
    uct_component_attr_t attr{};
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_NAME | UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT;
    if (uct_component_query(raw_components[c], &attr) != UCS_OK) continue;
    component_names.emplace_back(attr.name);
    std::vector<uct_md_resource_desc_t> mds(attr.md_resource_count);
    attr.field_mask = UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES;
    attr.md_resources = mds.data();
    if (uct_component_query(raw_components[c], &attr) != UCS_OK) continue;
    for (const uct_md_resource_desc_t& md_desc : mds) {
      uct_md_config_t* raw_cfg = nullptr;
      if (uct_md_config_read(raw_components[c], nullptr, nullptr, &raw_cfg) != UCS_OK) continue;
      std::unique_ptr<uct_md_config_t, MdConfigDeleter> cfg(raw_cfg);
      uct_md_h raw_md = nullptr;
      if (uct_md_open(raw_components[c], md_desc.md_name, cfg.get(), &raw_md) != UCS_OK) continue;
      std::unique_ptr<uct_md, MdDeleter> md(raw_md);
      uct_md_attr_t md_attr{};
      if (uct_md_query(md.get(), &md_attr) == UCS_OK)
        md_types |= md_attr.cap.reg_mem_types | md_attr.cap.access_mem_types;
      uct_tl_resource_desc_t* raw_tls = nullptr;
      unsigned num_tls = 0;
      if (uct_md_query_tl_resources(md.get(), &raw_tls, &num_tls) != UCS_OK) continue;
      std::unique_ptr<uct_tl_resource_desc_t, TlListDeleter> tls(raw_tls);
      for (unsigned t = 0; t < num_tls; ++t)
        caps.transports.push_back(
            fmt::format("{}/{}: {}/{}", attr.name, md_desc.md_name, raw_tls[t].tl_name, raw_tls[t].dev_name));
    }
  }

  const KindSpec kinds[] = {{UCS_MEMORY_TYPE_HOST, "host", ""},
                            {UCS_MEMORY_TYPE_CUDA, "cuda", "cuda"},
                            {UCS_MEMORY_TYPE_CUDA_MANAGED, "cuda-managed", "cuda"},
                            {UCS_MEMORY_TYPE_ROCM, "rocm", "rocm"}};
  for (const KindSpec& k : kinds) {
    MemoryKindSupport m;
    m.kind = k.name;
    const std::uint64_t bit = std::uint64_t{1} << k.type;
    const bool by_ucp = (ucp_types & bit) != 0;
    const bool by_md = (md_types & bit) != 0;
    m.available = by_ucp && (k.type == UCS_MEMORY_TYPE_HOST || by_md);
    if (m.available) {
      m.detail = k.type == UCS_MEMORY_TYPE_HOST ? "always" : "registered and accessed by a UCX memory domain";
    } else {
      const bool component = std::any_of(component_names.begin(), component_names.end(), [&](const std::string& n) {
        return n.rfind(k.component_prefix, 0) == 0;
      });
      m.detail = component ? fmt::format("UCX has a {} component but found no usable device", k.component_prefix)
                           : fmt::format("UCX {} was built without {} support (components: {})", caps.ucx_version,
                                         k.component_prefix, fmt::join(component_names, ", "));
    }
    caps.memory_kinds.push_back(std::move(m));
  }

  unsigned major = 0, minor = 0, release = 0;
  ucp_get_version(&major, &minor, &release);
  if (major == 1 && minor < 14) {
    caps.known_defects.push_back(fmt::format(
        "UCX {}.{}.{} aborts a process (assertion \"got REQ message\" in ucp_request_send_state_ff) when a TCP "
        "endpoint's peer dies or is closed while the endpoint's wire-up request still waits for the connection: "
        "peers on other hosts and failure_detection ucx-peer are exposed during connection set-up; fixed in UCX "
        "1.14 (openucx/ucx#8175)",
        major, minor, release));
  }
  return caps;
}

}  // namespace shardwire
