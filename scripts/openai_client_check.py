#!/usr/bin/env python3
"""Drive `ferrotune api` with the official `openai` Python client, as a user's program would.

Starts the server on SmolLM2 (greedy), then checks with the client: the model list, a chat completion whole and
streamed (the streamed deltas must add up to the whole answer), usage counts and finish reasons, a completion,
the client's typed errors for a bad request and a wrong API key. Exits non-zero on the first failure.

    python scripts/openai_client_check.py --binary target/release/ferrotune \
        --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

Needs `pip install openai` (CI pins the version in .ci/run and installs it in a venv outside the repo).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import openai

API_KEY = "ferrotune-ci-key"


def start_server(binary: str, model: str) -> tuple[subprocess.Popen, str]:
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(f"model_name_or_path: {model}\ndo_sample: false\nmax_new_tokens: 32\n")
    cfg.close()
    env = dict(os.environ, API_PORT="0", API_KEY=API_KEY, API_MODEL_NAME="smollm2")
    proc = subprocess.Popen([binary, "api", cfg.name], stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"the server did not start: {line!r}")
    return proc, line.removeprefix("listening on ") + "/v1"


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/ferrotune")
    parser.add_argument("--model", default=".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    args = parser.parse_args()
    proc, base_url = start_server(args.binary, args.model)
    try:
        client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=120)
        models = client.models.list()
        check([m.id for m in models.data] == ["smollm2"], "models.list names API_MODEL_NAME")

        messages = [{"role": "user", "content": "What is the capital of France?"}]
        whole = client.chat.completions.create(model="smollm2", messages=messages)
        answer = whole.choices[0].message.content
        check("Paris" in answer, f"chat answer mentions Paris: {answer!r}")
        check(whole.choices[0].finish_reason in ("stop", "length"), f"finish_reason {whole.choices[0].finish_reason}")
        usage = whole.usage
        check(usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"usage {usage}")

        stream = client.chat.completions.create(
            model="smollm2", messages=messages, stream=True, stream_options={"include_usage": True}
        )
        pieces, finish, streamed_usage = [], None, None
        for chunk in stream:
            if chunk.usage is not None:
                streamed_usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        check("".join(pieces) == answer, "streamed deltas add up to the whole answer")
        check(finish == whole.choices[0].finish_reason, f"streamed finish_reason {finish}")
        check(streamed_usage is not None and streamed_usage.completion_tokens == usage.completion_tokens, "streamed usage")

        short = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=3)
        check(short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3, "max_tokens gives finish_reason length")

        completion = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5)
        check(completion.usage.completion_tokens == 5 and completion.choices[0].text != "", f"completion {completion.choices[0].text!r}")

        try:
            client.chat.completions.create(model="smollm2", messages=[{"role": "assistant", "content": "hi"}])
            check(False, "a conversation starting with the assistant is refused")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and "user" in str(e), "bad role order -> BadRequestError (400)")

        wrong = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
        try:
            wrong.models.list()
            check(False, "a wrong API key is refused")
        except openai.AuthenticationError as e:
            check(e.status_code == 401, "wrong API key -> AuthenticationError (401)")
    finally:
        proc.kill()
        proc.wait()
    print("openai client check passed")


if __name__ == "__main__":
    main()
