"""Chat prompts (eval/tasks/chat.py) in SmolLM2's real template (its GGUF tokenizer fixture):
the prefilled HumanEval turn, the summarization turns and where a chat completion is cut."""

import os

import pytest

from specsample.eval.table1 import grid
from specsample.eval.tasks import chat, humaneval, xsum
from specsample.tokenizer import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2 = os.path.join(REPO, "tests", "fixtures", "gguf", "smollm2_tokenizer.gguf")
OPEN_REPLY = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tok():
  return Tokenizer.load(SMOLLM2)


def test_humaneval_prompt_prefills_the_assistant_turn_with_the_problem(tok):
  problem = humaneval.load_problems(limit=1)[0]
  text = chat.humaneval_prompt(tok, problem["prompt"])
  prefill = f"{OPEN_REPLY}```python\n{problem['prompt']}"
  assert text.endswith(prefill)  # the model continues the function body
  user = text[:-len(prefill)]
  assert user.startswith("<|im_start|>system\n")  # the template's default system turn
  assert user.endswith(f"<|im_start|>user\n{chat.HUMANEVAL_INSTRUCTION}```python\n"
                       f"{problem['prompt']}```<|im_end|>\n")
  ids = tok.encode(text, add_bos=tok.add_bos_token)
  # SmolLM2 adds no BOS (its bos token is <|im_start|>, which the template writes itself).
  assert not tok.add_bos_token and ids == tok.encode(text, add_bos=False)
  assert ids.count(tok.bos_id) == text.count("<|im_start|>") == 3
  # <|im_end|> (eos) closes the system and user turns only: the assistant's stays open.
  assert ids.count(tok.eos_id) == 2
  assert tok.decode(ids).endswith(problem["prompt"])


def test_chat_completion_is_cut_at_the_fence_and_the_stop_sequences():
  body = "    return sorted(numbers)[0]\n"
  assert chat.truncate_code(body + "```\n\nThis function sorts the list.") == body
  assert chat.truncate_code(body + "\ndef helper():\n    pass\n") == body
  assert chat.truncate_code("```") == ""
  # Raw prompts keep the paper's stops: the fence is a chat stop only.
  assert humaneval.truncate(body + "```") == body + "```"
  assert grid.code_stops("raw") == humaneval.STOP_SEQUENCES
  assert grid.code_stops("chat") == humaneval.STOP_SEQUENCES + ("```",)


def test_summary_prompt_is_the_recorded_turn_after_a_shot_exchange(tok):
  doc = "def inc(x):\n    # one more\n    return x + 1\n"
  zero = chat.summary_prompt(tok, doc, code=True, max_doc_chars=1000)
  assert zero == chat.chat(tok, chat.CHAT_INSTRUCTION + doc)  # the draft's docsum_chat prompts
  one = chat.summary_prompt(tok, doc, code=True, max_doc_chars=1000, shot=chat.CODE_SHOT)
  last_turn = f"<|im_start|>user\n{chat.CHAT_INSTRUCTION}{doc}<|im_end|>\n{OPEN_REPLY}"
  assert zero.endswith(last_turn) and one.endswith(last_turn)  # code kept line by line
  shot = (f"<|im_start|>user\n{chat.CHAT_INSTRUCTION}{chat.CODE_SHOT['document']}<|im_end|>\n"
          f"{OPEN_REPLY}{chat.CODE_SHOT['summary']}<|im_end|>\n")
  assert shot + last_turn in one and one.count("<|im_start|>user") == 2
  # News (real XSum): its instruction, whitespace collapsed as in the raw prompt.
  news = chat.summary_prompt(tok, "Rain fell.\nRoads shut.", code=False, max_doc_chars=1000,
                             shot=xsum.DEFAULT_SHOT)
  assert news.endswith(f"{chat.NEWS_INSTRUCTION}Rain fell. Roads shut.<|im_end|>\n{OPEN_REPLY}")
  # A long document is cut at a line end, under max_doc_chars.
  long_doc = "".join(f"x{i} = {i}\n" for i in range(100))
  cut = chat.cut_code(long_doc, 50)
  assert len(cut) <= 50 and cut.endswith("\n") and long_doc.startswith(cut)


def test_chat_needs_a_template():
  toy = Tokenizer.load(os.path.join(REPO, "assets", "tokenizer", "tokenizer.model"))
  with pytest.raises(ValueError, match="chat template"):
    chat.chat(toy, "hello")


def test_long_prompt_variants_put_context_before_the_task(tok):
  """eval/kvp/tasks.py's long prompts: HumanEval after module code in the prefilled turn,
  summarization after solved examples that are never evaluated items."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from specsample.eval.kvp import tasks  # pylint: disable=g-import-not-at-top
  problems = humaneval.load_problems(limit=2)
  code = "import os\n\n\ndef helper(path):\n    return os.path.basename(path)\n\n" * 30
  stream = np.asarray(tok.encode(code, add_bos=False))
  texts = tasks.humaneval_long(tok, problems, stream, context_tokens=64)
  for problem, text in zip(problems, texts):
    prefill = text[text.rindex(OPEN_REPLY) + len(OPEN_REPLY):]
    assert prefill.startswith("```python\n") and prefill.endswith("\n\n" + problem["prompt"])
    context = prefill[len("```python\n"):-len(problem["prompt"]) - 1]
    assert context.endswith("\n") and context.strip() and context.strip() in code
    assert chat.humaneval_prompt(tok, problem["prompt"]) in text.replace(context + "\n", "")
  items = [{"document": f"def f{i}():\n    return {i}\n", "summary": f"Return {i}."}
           for i in range(6)]
  prompts = tasks.summary_long(tok, items, num_items=2, shots=3, max_doc_chars=1000)
  for i, text in enumerate(prompts):
    assert text.count("<|im_start|>user") == 4 and text.endswith(
        f"{chat.CHAT_INSTRUCTION}{items[i]['document']}<|im_end|>\n{OPEN_REPLY}")
    shown = [it for it in items if it["summary"] in text]  # shots carry their summaries
    assert len(shown) == 3 and all(it in items[2:] for it in shown)
  with pytest.raises(ValueError, match="tasks.shots=1 needs more"):
    tasks.summary_long(tok, items[:2], num_items=2, shots=1, max_doc_chars=1000)
