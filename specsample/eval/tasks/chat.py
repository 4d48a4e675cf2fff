"""Prompts in a model's chat template, for instruction-tuned targets (SmolLM2-Instruct).

An instruction-tuned model given a raw HumanEval prompt tends to answer in
prose; in its own chat format it writes code. Both Table 1 tasks therefore
have a chat form that keeps the paper's setting:

* HumanEval: the chat template with a PREFILLED ASSISTANT TURN. The user turn
  asks for the function (a short instruction and the problem's prompt in a
  ```python fence); the assistant turn is opened and already holds
  "```python\\n" + the problem's prompt, so the model continues the function
  body exactly as in the paper's completion setting. The continuation is cut
  at humaneval.STOP_SEQUENCES and at the closing fence (CODE_STOPS), then
  executed after the problem's prompt as usual.
* Summarization: the instruction + the document as the user turn; the
  summary is the reply's first line (xsum.truncate_summary). With a shot,
  one solved example comes first as a previous user / assistant exchange:
  the chat analogue of the paper's 1-shot XSum prompt.

The rendering is the tokenizer's own jinja2 chat_template (GGUF metadata or
tokenizer_config.json), as transformers' apply_chat_template renders it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jinja2

from specsample.eval.tasks import humaneval, xsum

FENCE = "```"
CODE_STOPS = humaneval.STOP_SEQUENCES + (FENCE,)
HUMANEVAL_INSTRUCTION = "Complete the following Python function.\n\n"
# The instruction the draft's chat-formatted training prompts were recorded with
# (alignment/record.py): the docstring stand-in's summaries are asked for the same way.
CHAT_INSTRUCTION = "Summarize what this Python code does in one sentence.\n\n"
NEWS_INSTRUCTION = "Summarize this article in one sentence.\n\n"
# The stand-in's shot: code and its docstring's first sentence (composed for this
# repository, in the style of the set's summaries).
CODE_SHOT = {
    "document": ("def count_vowels(text):\n"
                 "    total = 0\n"
                 "    for char in text.lower():\n"
                 "        if char in \"aeiou\":\n"
                 "            total += 1\n"
                 "    return total\n"),
    "summary": "Return the number of vowels in a string.",
}


def render(tokenizer, messages: Sequence[Mapping[str, str]]) -> str:
  """`messages` ({role, content}) in the tokenizer's chat template, opening the assistant's turn."""
  template = getattr(tokenizer, "chat_template", None)
  if not template:
    raise ValueError("chat prompts need a tokenizer with a chat template (GGUF or "
                     "tokenizer_config.json)")
  return jinja2.Environment().from_string(template).render(
      messages=list(messages), add_generation_prompt=True)


def chat(tokenizer, user: str) -> str:
  """One user turn in the tokenizer's chat template, ready for the assistant's reply."""
  return render(tokenizer, [{"role": "user", "content": user}])


def humaneval_prompt(tokenizer, prompt: str, context: str = "") -> str:
  """The chat template with a prefilled assistant turn: ends with "```python\\n" + `prompt`.

  context: code the assistant turn holds before the problem's prompt (the
  long-prompt variant of eval/kvp/tasks.py: the function in a module); the user
  turn asks for the function alone either way.
  """
  user = f"{HUMANEVAL_INSTRUCTION}{FENCE}python\n{prompt}{FENCE}"
  return chat(tokenizer, user) + f"{FENCE}python\n" + context + prompt


def truncate_code(completion: str) -> str:
  """A chat completion cut at the first stop sequence or closing fence."""
  return humaneval.truncate(completion, CODE_STOPS)


def cut_code(text: str, max_chars: int) -> str:
  """Code cut to at most max_chars at a line end (whitespace kept: it is code)."""
  if len(text) <= max_chars:
    return text
  cut = text[:max_chars]
  end = cut.rfind("\n")
  return cut[:end + 1] if end > 0 else cut


def summary_prompt(tokenizer, document: str, *, code: bool, max_doc_chars: int,
                   shot: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None) -> str:
  """The summarization chat prompt: [shot exchanges,] instruction + document.

  code: the docstring stand-in (CHAT_INSTRUCTION, code kept line by line) or
    news (NEWS_INSTRUCTION, whitespace collapsed as in the raw XSum prompt).
  shot: {document, summary} shown as a previous exchange, or a sequence of them
    (many-shot, in order); None: zero-shot.
  """
  instruction = CHAT_INSTRUCTION if code else NEWS_INSTRUCTION
  shorten = ((lambda text: cut_code(text, max_doc_chars)) if code else
             (lambda text: xsum.truncate_document(text, max_doc_chars)))
  shots = [] if shot is None else [shot] if isinstance(shot, Mapping) else list(shot)
  messages = []
  for example in shots:
    messages += [{"role": "user", "content": instruction + shorten(example["document"])},
                 {"role": "assistant", "content": xsum.normalize_whitespace(example["summary"])}]
  messages.append({"role": "user", "content": instruction + shorten(document)})
  return render(tokenizer, messages)
