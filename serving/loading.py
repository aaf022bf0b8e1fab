"""What a loaded version goes through before it serves, as in TF Serving's
SavedModelBundleFactory and source adapter: the batching wrapper, then warmup.

The model manager loads the session bundle (Servable.load) and hands it here; what this
returns is what requests get, so warmup already runs through the batching wrapper.

    manager = ModelManager(model_config=config, prepare=functools.partial(
        loading.prepare_version, metrics=metrics, batching=None, warmup=True))
"""

from __future__ import annotations

from serving import warmup as warmup_lib
from serving.batching import BatchingServable, batching_options_for
from serving.config import BatchingOptions
from serving.metrics import Metrics
from serving.servable import Servable


def prepare_version(servable: Servable, *, metrics: Metrics,
                    batching: BatchingOptions | None = None,
                    per_model_batching: bool = False, warmup: bool = True,
                    warmup_iterations: int = 1, check_method: bool = False):
    """Wraps a freshly loaded version for batching (if enabled), then warms it up.

    Args:
      servable: the loaded version.
      metrics: batch sizes and warmup are recorded here.
      batching: the server's batching parameters; None serves without batching.
      per_model_batching: --enable_per_model_batching_parameters.
      warmup: --enable_model_warmup.
      warmup_iterations: --num_request_iterations_for_warmup.
      check_method: --enable_signature_method_name_check, for the replayed requests.

    Returns:
      The version as it serves: servable, or a BatchingServable around it.

    Raises:
      ServingError: the load must fail (bad per-model batching parameters, failed warmup);
        whatever was made here is closed first.
    """
    served = servable
    if batching is not None:
        served = BatchingServable(
            servable, batching_options_for(servable, batching, per_model=per_model_batching),
            metrics=metrics)
    if warmup:
        try:
            warmup_lib.run_warmup(served, metrics=metrics, iterations=warmup_iterations,
                                  check_method=check_method)
        except BaseException:
            served.close()
            raise
    return served
