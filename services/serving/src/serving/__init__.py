"""`serving`: the pieces every BentoML service of the project shares (the teacher's and the
recommender's), so each service only holds its own request models and endpoints.

* `serving.asgi`: `RequestLimits` (415 for a body that is not JSON, 413 for one over the cap) and
  `DigestHeader` (names the served model in every response);
* `serving.requests`: `StrictBody`, the base of every request model (unknown fields are a 400);
* `serving.startup`: checks that stop a misconfigured `bentoml serve` once, workers that die with
  their server, `fail_startup`;
* `serving.testing`: a `bentoml serve` subprocess on a free port, for tests and benchmarks.
"""
