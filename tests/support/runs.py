"""What a Dagster run that a test materialized with ``raise_on_error=False`` says about its failed steps."""

from __future__ import annotations


def step_failures(result) -> dict[str, str]:
    """``{step: the error that failed it}`` for every step that raised (a failed asset check is not one), short
    enough for a CI log: a test asserts this is empty, so a failure names the step and its innermost error
    (with the frame that raised it) instead of an output missing further down."""
    failures = {}
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        error, chain = data.error, []
        while error is not None:
            chain.append(error.message.strip())
            innermost, error = error, error.cause or error.context
        frames = "".join(innermost.stack[-1:]).rstrip() if chain else ""
        failures[event.step_key] = " <- ".join(reversed(chain)) + (f"\n{frames}" if frames else "") + \
            (f"\n{data.user_failure_data.description}" if data.user_failure_data else "")
    return failures
