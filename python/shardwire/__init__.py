"""Shardwire: move large-model weights between processes, resharding and converting on the way.

Python bindings of the C++ library (Debian's /usr/bin/python3, python3-torch, python3-numpy).
Models, layouts and plans::

    import shardwire
    model = shardwire.Model.from_checkpoint("../shared/models/tiny-llama3-bf16")
    src = shardwire.Layout.from_string(model, "fsdp=2")
    dst = shardwire.Layout.from_string(model, "tp=2")
    plan = shardwire.plan(src, dst)
    print(plan.total_bytes, plan.bytes_received_per_destination())

RL weight sync: :class:`WeightPublisher` / :class:`WeightSubscriber` (shardwire.weight_sync);
P2P model loading: :class:`ModelSource` / :class:`ModelLoader` (shardwire.model_loading).
Every blocking call releases the GIL. The waits (CoordinatorClient.get, connect, push,
wait_for_update, join, wait_for_engines, ModelLoader.load) raise KeyboardInterrupt within
~0.1 s (get: 0.25 s) of Ctrl-C, CoordinatorClient(...) dialling an address that refuses
connections within about a second; the other coordinator calls, constructors and close() are not interrupted but bounded
by their timeouts (CoordinatorClient: call_timeout_s, unavailable_timeout_s).

Every error is a subclass of :class:`shardwire.errors.ShardwireError`, one class per C++
error code, carrying the C++ message; an argument pybind11 cannot convert to its C++ parameter
(``add("k", 2**70)``) is an InvalidArgumentError carrying pybind11's message (_bound_arguments).
"""
from __future__ import annotations

from . import errors
from ._shardwire import ERROR_CODES as _ERROR_CODES

errors._register_codes(_ERROR_CODES)

from ._shardwire import CoordinatorClient, CoordinatorServer, Layout, Model, Plan  # noqa: E402
from ._shardwire import load_model_rules as _load_model_rules  # noqa: E402
from ._shardwire import plan as _plan  # noqa: E402
from ._bound_arguments import translate as _translate, translate_argument_errors as _translate_argument_errors  # noqa: E402

# Arguments pybind11 cannot convert raise InvalidArgumentError, not TypeError (_bound_arguments).
from . import _shardwire as _raw  # noqa: E402

for _cls in (CoordinatorClient, CoordinatorServer, Layout, Model, Plan, _raw._WeightPublisher,
             _raw._WeightSubscriber, _raw._ModelSource, _raw._ModelLoader):
    _translate_argument_errors(_cls)
plan = _translate(_plan)
load_model_rules = _translate(_load_model_rules)
load_model_rules.__module__, load_model_rules.__qualname__ = __name__, "load_model_rules"
plan.__module__, plan.__qualname__ = __name__, "plan"  # picklable by reference, as shardwire.plan
del _cls, _raw
from .errors import ShardwireError  # noqa: E402
from .convert import dequantize_fp8_block, quantize_fp8_block  # noqa: E402
from .tensors import shard_views, torch_dtype  # noqa: E402
from .weight_sync import WeightPublisher, WeightSubscriber, adopt_parameters, allocate_shard_buffer  # noqa: E402
from .model_loading import ModelLoader, ModelSource  # noqa: E402
from .tensors import check_shard_tensors  # noqa: E402

__all__ = ["CoordinatorClient", "CoordinatorServer", "Layout", "Model", "Plan", "plan", "errors", "ShardwireError", "shard_views", "torch_dtype",
           "WeightPublisher", "WeightSubscriber", "adopt_parameters", "allocate_shard_buffer",
           "quantize_fp8_block", "dequantize_fp8_block", "ModelSource", "ModelLoader", "check_shard_tensors",
           "load_model_rules"]
