"""Two small lm-evaluation-harness tasks made from the packaged text (`optimize asset text`),
written as task YAML + local JSONL (no hub): one of each request type that lm-eval sends.

- `optimizer_cloze` (multiple_choice -> loglikelihood requests): a TinyStories story up to the
  last word of one of its sentences; the choices are that word and three last words of other
  stories' sentences. Metric: acc / acc_norm.
- `optimizer_topic` (generate_until): two worked examples, then the opening of a Wikipedia
  article and "Topic:"; the answer is the article's title, generated greedily until a newline.
  Metric: exact_match.

The items are a deterministic function of the text files and the counts:

    include_path = write_tasks(Path("tasks/"), text_dir, cloze=40, topic=20)
    lm_eval --model hf ... --include_path tasks/ --tasks optimizer_cloze,optimizer_topic
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

TASKS = ("optimizer_cloze", "optimizer_topic")
SEED = 26  # the distractors' draw

_CLOZE_YAML = """\
task: optimizer_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_TOPIC_YAML = """\
task: optimizer_topic
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{title}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: ["^ +", " +$"]
metadata:
  version: 1.0
"""


def cloze_items(text: str, count: int) -> list[dict]:
    """`count` items from TinyStories text (stories separated by <|endoftext|>): the story up to
    the last word of its first sentence past the first one that ends in a plain word and a period."""
    picked: list[tuple[str, str]] = []  # (context, answer)
    for story in text.split("<|endoftext|>"):
        story = " ".join(story.split())
        sentences = re.split(r"(?<=\.) ", story)
        for i, sentence in enumerate(sentences[1:], start=1):
            m = re.fullmatch(r"(.{20,}) ([a-z]{3,})\.", sentence)
            if m:
                context = " ".join(sentences[:i] + [m.group(1)])
                picked.append((context, m.group(2)))
                break
        if len(picked) == count:
            break
    if len(picked) < count:
        raise ValueError(f"the text holds {len(picked)} usable stories, fewer than the {count} asked for")
    rng = random.Random(SEED)
    words = sorted({answer for _, answer in picked})
    items = []
    for context, answer in picked:
        others = rng.sample([w for w in words if w != answer], 3)
        label = rng.randrange(4)
        choices = others[:label] + [answer] + others[label:]
        items.append({"context": context, "choices": choices, "label": label})  # lm-eval puts " " between
    return items


def _articles(wiki: str) -> list[tuple[str, str]]:
    """(title, first paragraph of the body) of each article of the <doc ...> tagged wiki text
    whose first paragraph names the title."""
    out = []
    for m in re.finditer(r'<doc [^>]*title="([^"]+)">\n(.*?)</doc>', wiki, re.S):
        title, body = m.group(1), m.group(2)
        paras = [p for p in body.split("\n") if p.strip() and p.strip() != title]
        if paras and len(paras[0]) >= 80 and title in paras[0]:  # the title is in the text: a subject to find
            para = paras[0] if len(paras[0]) <= 300 else paras[0][:300].rsplit(" ", 1)[0]
            out.append((title, para.strip()))
    return out


def topic_items(wiki: str, count: int) -> list[dict]:
    """`count` items from the wiki text: two fixed worked examples, then an article's opening."""
    articles = _articles(wiki)
    if len(articles) < count + 2:
        raise ValueError(f"the text holds {len(articles)} usable articles, fewer than the {count + 2} needed")
    shots = "".join(f"Text: {para}\nTopic: {title}\n\n" for title, para in articles[:2])
    return [{"prompt": f"{shots}Text: {para}\nTopic:", "title": title} for title, para in articles[2:count + 2]]


def write_tasks(folder: Path, text_dir: Path, cloze: int = 40, topic: int = 20) -> Path:
    """Write both tasks (YAML + JSONL) into `folder`; returns it (lm-eval's include_path)."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = {"optimizer_cloze": (cloze_items((text_dir / "tiny.utf8").read_text(encoding="utf-8"), cloze),
                                _CLOZE_YAML),
            "optimizer_topic": (topic_items((text_dir / "wiki.utf8").read_text(encoding="utf-8"), topic),
                                _TOPIC_YAML)}
    for name, (items, yaml) in sets.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(yaml.format(data=json.dumps(str(data.resolve()))), encoding="utf-8")
    return folder
